"""The device a record names: a CPU's model with its instruction set and family, read from /proc/cpuinfo."""

import torch

from replicate import provenance

ZEN2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma

processor\t: 1
model name\t: another entry that is never read
"""


def test_cpu_device_names_instruction_set_and_family(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN2)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert provenance.device_name("cpu") == "AMD EPYC (AVX2; family 23, model 49)"
    # the same virtual model name on a CPU with native bf16: told apart by what follows it
    cpuinfo.write_text(ZEN2.replace("23", "25").replace("49", "17").replace("avx2 fma", "avx2 fma avx512f avx512_bf16"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert provenance.device_name("cpu") == "AMD EPYC (AVX512, BF16; family 25, model 17)"
    assert provenance.provenance({"a": 1}, device="cpu")["device"] == "AMD EPYC (AVX512, BF16; family 25, model 17)"


def test_cpu_device_without_cpuinfo(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", missing)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(provenance.platform, "processor", lambda: "arm")
    assert provenance.device_name("cpu") == "arm (DEFAULT)"
