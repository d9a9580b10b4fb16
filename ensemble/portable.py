"""CPU code paths pinned to one instruction set, so a member retrains to the same bits on another machine.

torch (ATen's vector kernels), oneDNN (convolutions), MKL (matrix products) and numba (the fused
optimizer steps) each pick their code path by the CPU they find: AVX-512 here, AVX2 there, and the
last bits of every sum differ, which training amplifies (probabilities 0.96 apart after 15 epochs
on two x86-64 machines with the same library versions). ``--cpu-isa avx2`` (the default for new
members) sets each library's own switch to AVX2, which every x86-64 server since 2013 has, before
the library first reads it:

* ``ATEN_CPU_CAPABILITY=avx2`` (read when torch first dispatches a CPU kernel),
* ``DNNL_MAX_CPU_ISA=AVX2`` (oneDNN, at its first primitive),
* ``MKL_CBWR=AVX2,STRICT`` (MKL's conditional numerical reproducibility, strict: also independent of
  memory alignment),
* ``NUMBA_CPU_NAME=haswell`` (numba's code generation: AVX2 + FMA, read when numba is imported),
* ``NPY_DISABLE_CPU_FEATURES`` and ``OPENCV_CPU_DISABLE`` without the AVX-512 families (numpy's and
  OpenCV's dispatch: segmentation's augmentation).

Set from Python, they take effect only if the library has not started yet; :func:`check` refuses a
fold whose torch already runs other kernels (with the fix), and :func:`record` writes what was in
effect, and the hardware, into each member. Bit-equality cannot hold across architectures (ARM,
x86-64) or on a GPU; :func:`record` says so rather than promising it.

This module imports no torch: it runs before torch is loaded.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from functools import cache
from typing import Any

from .errors import EnsError

ISAS = ("avx2", "native")
"""``--cpu-isa``: the pinned common set, or whatever this CPU does best (every member before ens 0.4)."""

_AVX512 = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR AVX512_KNL AVX512_KNM"
PINS: Mapping[str, Mapping[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "DNNL_MAX_CPU_ISA": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2,STRICT",
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": "",
        "NPY_DISABLE_CPU_FEATURES": _AVX512,
        "OPENCV_CPU_DISABLE": "AVX512_SKX,AVX512_COMMON,AVX512_KNL,AVX512_KNM,AVX512_CNL,AVX512_CLX,AVX512_ICL",
    },
    "native": {},
}
_TORCH_NAME = {"avx2": "AVX2"}  # what torch.backends.cpu.get_cpu_capability() reports under the pin


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def apply(isa: str) -> None:
    """Set the pins of ``isa`` in this process's environment (and so its worker processes'); a variable the
    user set to another value is refused, naming it, rather than silently overridden or ignored."""
    if not is_x86():
        return  # nothing to pin; record() says the member cannot be bit-equal to x86-64 ones
    for name, value in PINS[isa].items():
        if name == "OPENCV_CPU_DISABLE" and not any(f.startswith("avx512") for f in cpu_model()[1]):
            continue  # OpenCV warns of every feature it is asked to disable that the CPU lacks
        given = os.environ.get(name)
        if given is not None and given != value:
            raise EnsError(
                f"--cpu-isa {isa} sets {name}={value!r}, but the environment has {name}={given!r}; "
                f"unset it, or train with --cpu-isa native"
            )
        os.environ[name] = value


def check(isa: str, device_type: str) -> None:
    """Before a CPU fold trains: the pin is what torch runs (it is read once per process, at its first CPU
    kernel, so a process that used torch before ens set it runs native code)."""
    if isa == "native" or device_type != "cpu" or not is_x86():
        return
    import torch

    running = torch.backends.cpu.get_cpu_capability()
    if running != _TORCH_NAME[isa]:
        pins = " ".join(f"{k}={v!r}" for k, v in PINS[isa].items() if v)
        raise EnsError(
            f"--cpu-isa {isa}: torch in this process already runs {running} kernels (it was used before ens "
            f"could pin them), so the member would not reproduce elsewhere; train from `ens train` or a fresh "
            f"Python, start Python with {pins}, or pass --cpu-isa native"
        )
    numba = sys.modules.get("numba")
    if numba is not None and PINS[isa]["NUMBA_CPU_NAME"] != numba.config.CPU_NAME:
        raise EnsError(
            f"--cpu-isa {isa}: numba was loaded before ens could pin its target ({numba.config.CPU_NAME or 'host'}); "
            f"set NUMBA_CPU_NAME={PINS[isa]['NUMBA_CPU_NAME']} before starting Python, or pass --cpu-isa native"
        )


@cache
def cpu_model() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and its vector extensions (Linux), for the record."""
    name, flags = platform.processor() or platform.machine(), ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key.strip() == "flags":
                    wanted = ("avx", "fma", "amx", "sse4_2")
                    flags = tuple(sorted({f for f in value.split() if f.startswith(wanted)}))
                if flags and name:
                    break
    except OSError:
        pass
    return name, flags


def record(isa: str, device_type: str) -> dict[str, Any]:
    """What a member's folds ran on, and whether its recorded command can give the same bits elsewhere."""
    import torch

    name, flags = cpu_model()
    out: dict[str, Any] = {
        "cpu_isa": isa,
        "machine": platform.machine(),
        "cpu": name,
        "cpu_flags": list(flags),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "pins": {k: os.environ[k] for k in PINS.get(isa, {}) if k in os.environ},
    }
    if device_type != "cpu":
        out["portable"] = False
        out["why"] = f"trained on {device_type}: GPU kernels are not bit-equal across GPU models and drivers"
    elif not is_x86():
        out["portable"] = False
        out["why"] = f"trained on {platform.machine()}: bit-equal only on the same architecture and libraries"
    elif isa == "native":
        out["portable"] = False
        out["why"] = "native CPU code paths: bit-equal only on a CPU with the same instruction set"
    else:
        out["portable"] = True
        out["why"] = f"pinned to {isa}: bit-equal on any x86-64 CPU with {isa} and the same library versions"
    return out
