"""Members that reproduce on another machine: --cpu-isa pins, the hardware record, --memory-format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensemble import portable
from ensemble.errors import EnsError
from tests.conftest import env_without_coverage, make_folder, run_cli, tiny

PINNED = portable.PINS["avx2"]
x86_only = pytest.mark.skipif(not portable.is_x86(), reason="the pins are x86-64 instruction sets")


def _clean_env() -> dict[str, str]:
    """This process's environment without the pins conftest set: a fresh shell's."""
    env = env_without_coverage()
    for name in PINNED:
        env.pop(name, None)
    return env


def _train(folder: Path, store: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = ["train", "--dataset", f"folder:{folder}", "--opt", "dgrad", "--n", "1", "--threads", "1"]
    code = "from ensemble.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args, *tiny(2, "--members-dir", str(store), *extra)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folds(run: Path) -> list[np.ndarray]:
    out = []
    for k in range(5):
        with np.load(run / f"fold-{k}.npz") as z:
            out.append(z["probs"].copy())
    return out


@x86_only
def test_a_pinned_member_has_the_same_bits_with_the_native_instruction_set_masked(tmp_path):
    """One member trained twice in fresh processes: once on this CPU as it is (ens sets the pins itself), once
    with every AVX-512 family masked as on an older CPU (glibc's hwcaps, numpy's dispatch, and the pins set by
    hand beforehand, as a batch script would): the same probabilities, bit for bit, and both records say so."""
    folder = make_folder(tmp_path / "imgs", per_class=6)
    native = _train(folder, tmp_path / "A", _clean_env())
    assert native.returncode == 0, native.stderr
    masked_env = {
        **_clean_env(),
        **PINNED,
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512BW,-AVX512CD,-AVX512DQ,-AVX512VL,-AMX_BF16,-AMX_TILE",
    }
    masked = _train(folder, tmp_path / "B", masked_env)
    assert masked.returncode == 0, masked.stderr
    runs = [store / "imgs" / "DGrad" / "000" for store in (tmp_path / "A", tmp_path / "B")]
    for a, b in zip(*(_folds(r) for r in runs)):
        assert np.array_equal(a, b)
    for run in runs:
        meta = json.loads((run / "member.json").read_text())
        hw = meta["hardware"]
        assert hw["cpu_isa"] == "avx2" and hw["torch_capability"] == "AVX2" and hw["portable"] is True
        assert hw["pins"]["ATEN_CPU_CAPABILITY"] == "avx2" and hw["pins"]["MKL_CBWR"] == "AVX2,STRICT"
        assert hw["memory_format"] == "channels-last" and hw["machine"] == os.uname().machine
        assert "--memory-format channels-last --cpu-isa avx2" in meta["command"]


def test_apply_sets_each_pin_and_refuses_a_conflicting_one(monkeypatch):
    if not portable.is_x86():
        pytest.skip("nothing is pinned off x86-64")
    for name in PINNED:
        monkeypatch.delenv(name, raising=False)
    portable.apply("avx2")
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["DNNL_MAX_CPU_ISA"] == "AVX2"
    assert os.environ["NUMBA_CPU_NAME"] == "haswell"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    with pytest.raises(EnsError, match=r"ATEN_CPU_CAPABILITY='avx512'.*--cpu-isa native"):
        portable.apply("avx2")
    portable.apply("native")  # native pins nothing, so nothing conflicts


def test_a_process_already_running_other_kernels_is_refused_with_the_fix(monkeypatch):
    if not portable.is_x86():
        pytest.skip("nothing is pinned off x86-64")
    import torch

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(EnsError, match=r"already runs AVX512 kernels.*ATEN_CPU_CAPABILITY='avx2'"):
        portable.check("avx2", "cpu")
    portable.check("native", "cpu")  # native promises nothing
    portable.check("avx2", "cuda")  # the GPU's kernels are not pinned by these switches


def test_the_record_says_where_bit_equality_cannot_hold():
    pinned = portable.record("avx2", "cpu")
    assert pinned["portable"] is portable.is_x86()
    native = portable.record("native", "cpu")
    assert native["portable"] is False and "same instruction set" in native["why"]
    gpu = portable.record("avx2", "cuda")
    assert gpu["portable"] is False and "GPU" in gpu["why"]


def test_a_channels_last_member_is_applied_channels_last_and_reproduces_its_folds(capsys, tmp_path):
    """The memory format a member trained with is recorded, and `ens predict` applies its fold models the same
    way: fold 0's stored probabilities come back (to the float16 fold model's tolerance)."""
    folder = make_folder(tmp_path / "imgs", per_class=6)
    store = tmp_path / "M"
    for fmt in ("channels-last", "nchw"):
        label = ["--variant", "n"] if fmt == "nchw" else []
        code, _, err = run_cli(
            capsys,
            "train",
            "--dataset",
            f"folder:{folder}",
            "--opt",
            "sgd",
            *tiny(2, "--members-dir", str(store), "--memory-format", fmt, *label),
        )
        assert code == 0, err
    cl, nchw = (store / "imgs" / label / "000" for label in ("SGD", "SGD@n"))
    assert json.loads((cl / "member.json").read_text())["hardware"]["memory_format"] == "channels-last"
    assert json.loads((nchw / "member.json").read_text())["hardware"]["memory_format"] == "nchw"
    with np.load(cl / "fold-0.npz") as z:
        ids, stored = list(z["ids"]), z["probs"]
    code, out, err = run_cli(
        capsys,
        "predict",
        "--dataset",
        "imgs",
        "SGD1",
        *[str(folder / i) for i in ids],
        "--fold",
        "0",
        "--device",
        "cpu",
        "--members-dir",
        str(store),
    )
    assert code == 0, err
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(out))
    np.testing.assert_allclose(table[["a", "b", "c"]].to_numpy(), stored, atol=1e-3)
    from ensemble.prediction import StoredMember
    from ensemble.store import Store

    sgd, sgd_n = Store(store).members("imgs", "SGD"), Store(store).members("imgs", "SGD@n")
    assert StoredMember(sgd[0]).channels_last and not StoredMember(sgd_n[0]).channels_last
