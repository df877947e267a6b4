#!/usr/bin/env python
"""Commit the run records a sweep has added under ``results/``, with a message that says what they are.

A sweep writes one record per finished run (``results/<profile>/<key>.json``); the evidence workflow
commits them as they land, so that a machine that stops mid-sweep loses at most the runs in flight. The
message names, per record, the table rows it serves (``mod:table2 'FCOS+APS'``), its seed and AP, and
the device and commit(s) it was trained on, all read from the records themselves::

    Proxy records (AMD EPYC 7B13, 5d9473e): mod:table2 'FCOS' seed 2 (AP 59.3), ...

A run resumed from a checkpoint says the commits of its earlier attempts ("begun at 5a42ab7").

Pretrained backbones' weights files stay out of git (files of megabytes): only their ``.json`` records
are committed, and ``ensure_pretrained`` re-makes a missing file from its record (README, "Pretrained
backbones").

    python scripts/commit_records.py            # commit the new and changed records
    python scripts/commit_records.py --dry-run  # print the message only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from replicate.errors import ReplicateError
from replicate.experiments.store import Record
from replicate.experiments.sweep import run_uses
from replicate.io import read_json
from replicate.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


def changed_records(results: Path) -> list[Path]:
    """The record files under ``results`` that git sees as new or modified (not the analysis caches)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", str(results)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    paths = [ROOT / line[3:].strip() for line in out.splitlines()]
    profiles = set(PROFILES)
    return sorted(p for p in paths if p.suffix == ".json" and p.parent.name in profiles and p.parent.parent == results)


def _short(commit: object) -> str:
    return commit[:7] if isinstance(commit, str) else "unknown"


def describe(record: Record, uses: dict[str, list[tuple[str, str]]]) -> str:
    """``mod:table2 'FCOS' seed 2 (AP 59.3)``: the first table row the run serves, a paper's numbered table
    before its other pages (code variants, figures), and how many more rows it serves."""
    rows = sorted(uses.get(record["key"], []), key=lambda pair: not pair[0].partition(":")[2].startswith("table"))
    what = f"{rows[0][0]} '{rows[0][1]}'" if rows else f"{record['model']} (no table reads it)"
    more = f" (+{len(rows) - 1} more rows)" if len(rows) > 1 else ""
    ap = (record.get("metrics") or {}).get("AP")
    return f"{what}{more} seed {record['seed']} (AP {100 * ap:.1f})" if ap is not None else f"{what}{more} seed {record['seed']}"


def message(records: list[Record], seeds: int = 3) -> str:
    """The commit message: a title naming the records (one line per (profile, device, commit) group in the
    body when they come from several) and a line per record."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        p = r.get("provenance", {})
        commit = _short(p.get("commit")) + ("+dirty" if p.get("dirty") else "")
        earlier = sorted({_short(a.get("commit")) for a in p.get("attempts", [])[:-1]} - {_short(p.get("commit"))})
        if earlier:
            commit += f"; resumed, begun at {', '.join(earlier)}"
        groups.setdefault((r["profile"], p.get("device", "unknown device"), commit), []).append(r)
    uses = {profile: run_uses(profile, seeds) for profile in {r["profile"] for r in records}}
    titles, lines = [], []
    for (profile, device, commit), rs in groups.items():
        rs = sorted(rs, key=lambda r: (r["seed"], r["key"]))
        described = [describe(r, uses[profile]) for r in rs]
        titles.append(f"{profile.capitalize()} records ({device}, {commit}): {', '.join(described)}")
        lines += [f"- {r['profile']}/{r['key']}.json: {d}" for r, d in zip(rs, described)]
    if len(titles) > 1:  # one title line; each group's own in the body
        lines = titles + [""] + lines
        titles = [f"Records of {len(records)} runs from {len(groups)} provenances (below)"]
    return titles[0] + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the results store (default: results/)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds the tables ask for, to name the rows (default 3)")
    parser.add_argument("--dry-run", action="store_true", help="print the message, commit nothing")
    args = parser.parse_args(argv)
    results = args.results.resolve()
    paths = changed_records(results)
    try:
        records = [read_json(p, what="run record") for p in paths]
    except ReplicateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not paths:
        print("no new or changed records")
        return 0
    text = message(records, args.seeds)
    if not args.dry_run:  # committed before anything is printed, so that a closed output cannot stop it
        files = [str(p) for p in paths]
        subprocess.run(["git", "add", "--", *files], cwd=ROOT, check=True)
        subprocess.run(["git", "commit", "-q", "-F", "-", "--", *files], cwd=ROOT, input=text, text=True, check=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
