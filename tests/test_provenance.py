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


def test_bf16_autocast_warns_once_where_the_cpu_emulates_it(monkeypatch):
    import warnings

    from replicate.engine import inference

    cpu = torch.device("cpu")
    for native, expected in ((True, 0), (False, 1)):
        monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
        inference._warn_if_bf16_is_emulated.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):  # one warning per process, not per training step
                with inference.autocast(cpu, "bf16"):
                    assert torch.get_autocast_dtype("cpu") == torch.bfloat16
            with inference.autocast(cpu, None):  # float32 never warns
                pass
        emulated = [w for w in caught if "without native bf16" in str(w.message)]
        assert len(emulated) == expected
    inference._warn_if_bf16_is_emulated.cache_clear()
