"""``ens demo``: the whole pipeline on data every install has, in about two minutes on a laptop CPU.

scikit-learn's bundled 8x8 digits stand in for a medical dataset; timm's tiny
``test_resnet`` stands in for ResNet50. Two members each of SGD, DGrad and Cos1 are
trained with the 5-fold protocol, then fused with the sum rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .fusion import fuse
from .reporting.tables import render
from .store import Store
from .learn.trainer import TrainConfig
from .training import TrainRequest, train_members

DEMO_MEMBERS = {"SGD": {"lr": 0.02}, "DGrad": {}, "Cos1": {}}
DEMO_EXPRESSIONS = [
    "SGD1",
    "DGrad1",
    "Cos1_1",
    "SGD2",
    "DGrad2",
    "Cos1_2",
    "SGD1+DGrad1",
    "DGrad1+Cos1_1",
    "SGD2+DGrad2+Cos1_2",
]


def demo_config(**kw: object) -> TrainConfig:
    base = dict(model="test_resnet", epochs=3, batch_size=64, size=16, device="cpu", workers=0, pretrained=False)
    base.update(kw)
    return TrainConfig(**base)


def run_demo(
    members_dir: Path, n: int = 2, progress: bool = True, echo: Callable[[str], None] = print, fmt: str = "table"
) -> list[dict]:
    for label, settings in DEMO_MEMBERS.items():
        cfg = demo_config(lr=settings.get("lr"))
        train_members(
            TrainRequest("digits", label, n, cfg, members_dir, Path("datasets"), progress=progress), echo=echo
        )
    store = Store(members_dir)
    rows = [fuse(store, "digits", e).row() for e in DEMO_EXPRESSIONS if _available(store, e, n)]
    echo(render(rows, fmt, title="digits, 5-fold CV, sum rule: mixed optimizers vs one kind"))
    echo(
        f'Members are in {members_dir}/digits; try: ens fuse --dataset digits "SGD2+DGrad2" '
        f"--members-dir {members_dir}   and   ens report --members-dir {members_dir}"
    )
    return rows


def _available(store: Store, expr: str, n: int) -> bool:
    from .fusion.expr import parse

    return all(t.count <= len(store.runs("digits", t.label)) for t in parse(expr))
