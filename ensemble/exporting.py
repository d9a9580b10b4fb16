"""``ens export``: an ensemble as a self-contained folder another program can apply.

    DIR/manifest.json                         classes, rule, preprocessing, members and their files
    DIR/<Label>/<run>/model-<k>.safetensors   every fold model of every member (as stored)
    DIR/<Label>/<run>/model-<k>.onnx          when onnx is installed (``pip install "ens[onnx]"``)

Each ONNX file is checked against PyTorch on a few random inputs (onnxruntime, max abs
difference of the logits below ``ONNX_TOLERANCE``) before the folder is put in place; the
folder appears by one rename, and an existing one is never overwritten. Folders and files get
the modes ``mkdir`` and ``open()`` give (the umask's), so a shared lab folder stays readable.

:func:`ensemble.exported.load_export` reads the folder back (``ens predict --from DIR``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EnsError, UsageError
from .fusion import select
from .fusion.expr import format_terms
from .fusion.rules import RULES
from .learn.infer import NORMALISATIONS, TTA_FLIPS
from .outputs import check_free_space
from .prediction import check_members, load_fold_model, recorded_dicom_window, trained_channels_last
from .store import Store, run_name
from .tasks import get_task

ONNX_TOLERANCE = 1e-4
MANIFEST_VERSION = 1  # what ensemble.exported reads; bump it when the manifest's meaning changes


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _to_onnx(model, size: int, path: Path) -> float:  # noqa: ANN001 - a torch module
    """Export ``model`` (float32, CPU) with a dynamic batch; returns the max |logit difference| to PyTorch."""
    import onnxruntime
    import torch

    example = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; torch marks it deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    return float(np.abs(got - want).max())


def export(store: Store, dataset: str, expr: str, out: Path, *, rule: str = "sum", onnx: bool | None = None) -> Path:
    """Write the folder; ``onnx`` None exports ONNX when onnx and onnxruntime are installed."""
    import torch

    if rule not in RULES:
        raise UsageError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    if out.exists():
        raise UsageError(f"--out {out} already exists; an export never overwrites")
    terms, members = select(store, dataset, expr)
    check_members(members)
    with_onnx = onnx_available() if onnx is None else onnx
    if with_onnx and not onnx_available():
        raise UsageError('--onnx needs onnx and onnxruntime: pip install "ens[onnx]"')
    models = sum(m.model_file(k).stat().st_size for m in members for k in range(m.meta.folds))
    check_free_space(out.parent, models * (3 if with_onnx else 1) + 2**20, what=f"--out {out}")  # ONNX is fp32
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()  # the umask's mode, as the folder will keep (mkdtemp's 0700 would hide it from the lab)
    try:
        entries = []
        for m in members:
            rel = Path(m.label) / run_name(m.run)
            (tmp / rel).mkdir(parents=True)
            files, onnx_files, worst = [], [], 0.0
            for k in range(m.meta.folds):
                shutil.copyfile(m.model_file(k), tmp / rel / m.model_file(k).name)  # mode as open() gives
                files.append((rel / m.model_file(k).name).as_posix())
                if with_onnx:
                    path = tmp / rel / f"model-{k}.onnx"
                    diff = _to_onnx(load_fold_model(m, k, torch.device("cpu")), int(m.meta.recipe["size"]), path)
                    if not diff < ONNX_TOLERANCE:
                        raise EnsError(
                            f"{m.name} fold {k}: the ONNX model differs from PyTorch by {diff:.2e} "
                            f"(over {ONNX_TOLERANCE:g}); nothing was exported"
                        )
                    worst = max(worst, diff)
                    onnx_files.append((rel / path.name).as_posix())
            norm = m.meta.recipe.get("normalisation", "imagenet")
            entries.append(
                {
                    "label": m.label,
                    "run": m.run,
                    "recipe_hash": m.recipe_hash,
                    "model": m.meta.recipe["model"],
                    "stem": m.meta.recipe.get("stem", "default"),
                    "recipe": m.meta.recipe,
                    "folds": files,
                    "onnx": onnx_files,
                    "onnx_max_abs_diff": worst if with_onnx else None,
                    "preprocessing": {
                        "size": m.meta.recipe["size"],
                        "normalisation": norm,
                        "resize": "bilinear",
                        "channels": "grey replicated to RGB, alpha dropped",
                        "scale": "uint8 (16-bit and float images by their own range)",
                        "mean": [v * 255 for v in NORMALISATIONS[norm][0]],
                        "std": [v * 255 for v in NORMALISATIONS[norm][1]],
                        "layout": "NCHW float32",
                        # how the fold models were trained and are applied (the last bits follow it)
                        "memory_format": "channels-last" if trained_channels_last(m) else "nchw",
                        # a DICOM input: rescale slope/intercept, then this window (ensemble.data.dicom)
                        "dicom_window": recorded_dicom_window(m),
                    },
                }
            )
        notes = get_task(members[0].meta.task).export_notes()
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "ens": __version__,
            "dataset": dataset,
            "task": members[0].meta.task,
            "expression": format_terms(terms),
            "rule": rule,
            "classes": members[0].classes,
            "fingerprint": members[0].fingerprint,
            "member": "mean of the softmax of its fold models" + notes["member"],
            "fusion": f"{rule} rule over members (ensemble.fusion.rules.{RULES[rule].__name__})" + notes["fusion"],
            "tta_flips": [list(f) for f in TTA_FLIPS],
            "members": entries,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
