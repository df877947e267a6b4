"""The conda environment mirrors the pip pins (users on clusters get the tested versions)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s;]+)\s*", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_matches_constraints():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = _pins(pip_section)
    assert pins, "environment.yml pins nothing"
    for name, version in pins.items():
        assert constraints.get(name) == version, f"environment.yml pins {name}=={version}, constraints.txt {constraints.get(name)}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
