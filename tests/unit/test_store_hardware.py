"""`auto` dtype: bf16 only where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters_store import hardware


def test_explicit_dtypes_pass_through_and_unknown_ones_are_refused() -> None:
    for dtype in ("bfloat16", "float16", "float32"):
        assert hardware.engine_dtype(dtype) == dtype
    with pytest.raises(ValueError, match="dtype must be one of"):
        hardware.engine_dtype("fp8")


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_follows_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(hardware, "bf16_is_fast", lambda: native)
    assert hardware.engine_dtype("auto") == expected


def test_cpu_flags_decide_without_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags, native in (("fpu avx2 fma", False), ("fpu avx512f avx512_bf16", True)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(hardware, "_CPUINFO", cpuinfo)
        hardware.bf16_is_fast.cache_clear()
        try:
            assert hardware.bf16_is_fast() is native
        finally:
            hardware.bf16_is_fast.cache_clear()
