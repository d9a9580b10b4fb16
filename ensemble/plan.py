"""Planning ``ens train``: from a request to the runs that are missing and the folds that still need training.

Planning is where the store's promises are kept before any work starts:

* the dataset is the one the store already holds under that name (same fingerprint);
* a label (or ``Label@variant``) holds members of one recipe: asking for more under
  another recipe is refused with the fields that differ and the ways out;
* a staged run resumes only under the recipe it started with (``--restart`` sets a
  stale one aside instead).

The executors only run the tasks a plan gives them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .data.dataset import Dataset
from .errors import StoreError
from .store import MemberMeta, RunDir, Store, label_key, recipe_diff, recipe_hash, run_name
from .learn.recipe import build_recipe
from .learn.trainer import TrainConfig


class RecipeMismatch(StoreError):
    """Members (or a staged run) of a label exist under another recipe than the one asked for."""


@dataclass
class LabelPlan:
    """What one label (or variant) of a request needs: the recipe, the runs there, the runs missing."""

    label: str  # label key: DGrad or DGrad@long
    recipe: dict[str, Any]
    existing: list[int]
    todo: list[int]

    @property
    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe)


def _diff_text(old: dict[str, Any], new: dict[str, Any]) -> str:
    if not old:
        return "the older run records no recipe"
    lines = recipe_diff(old, new)
    return "; ".join(lines[:6]) + (f"; and {len(lines) - 6} more" if len(lines) > 6 else "")


def check_dataset_identity(store: Store, dataset: str, ds: Dataset) -> dict[str, list[MemberMeta]]:
    """Two different datasets never share a store name: every member there has this fingerprint.
    Returns the members' metadata by label key, read once for planning."""
    metas = {label: store.metas(dataset, label) for label in store.labels(dataset)}
    for label, found in metas.items():
        for meta in found:
            if meta.fingerprint != ds.fingerprint:
                raise StoreError(
                    f"{store.root / dataset} holds members of another dataset than {ds.spec} (fingerprint "
                    f"{meta.fingerprint} in {label}/{run_name(meta.run)}, this one {ds.fingerprint}); store this "
                    "one apart with --name NAME, or use another --members-dir"
                )
    return metas


def missing_runs(existing: list[int], n: int) -> list[int]:
    """Indices of the runs missing to reach ``n`` complete ones, lowest first."""
    todo, r = [], 0
    while len(existing) + len(todo) < n:
        if r not in existing:
            todo.append(r)
        r += 1
    return todo


def plan_labels(
    store: Store,
    *,
    dataset: str,
    ds: Dataset,
    optimizers: list[str],
    variant: str | None,
    n: int,
    cfg: TrainConfig,
    runs: list[int] | None = None,
) -> list[LabelPlan]:
    """For each optimizer: its recipe, its complete runs (which must share that recipe), the runs missing
    (to reach ``n``, or of the run indices ``runs``)."""
    stored = check_dataset_identity(store, dataset, ds)
    plans = []
    for optimizer in optimizers:
        key = label_key(optimizer, variant)
        recipe = build_recipe(cfg, optimizer, ds)
        metas = stored.get(key, [])
        other = [m for m in metas if m.recipe_hash != recipe_hash(recipe)]
        if other:
            way = (
                f"train them apart with --variant NAME (fused as {optimizer}@NAME<count>)"
                if variant is None
                else "choose another --variant"
            )
            raise RecipeMismatch(
                f"{store.label_dir(dataset, key)} holds {len(other)} member(s) trained under another recipe "
                f"({_diff_text(other[0].recipe, recipe)}); {way}, or use another --members-dir"
            )
        existing = [m.run for m in metas]
        for run in existing:
            store.run_dir(dataset, key, run).tidy()  # leftovers of a publish killed after its rename
        todo = [r for r in runs if r not in existing] if runs else missing_runs(existing, n)
        plans.append(LabelPlan(key, recipe, existing, todo))
    return plans


def prepare_run(
    rd: RunDir, recipe: dict[str, Any], *, folds: int, restart: bool, echo: Callable[[str], None] = print
) -> list[int]:
    """Stage a run under ``recipe`` (the caller holds its lock); returns the folds still to train.

    A staging directory from another recipe is refused, or with ``restart`` moved aside
    (kept, named ``.<run>.stale-<time>``) so the run starts clean -- its folds are never reused.
    """
    staged = rd.staged_recipe()
    if staged is not None and recipe_hash(staged) != recipe_hash(recipe):
        if not restart:
            raise RecipeMismatch(
                f"{rd.staging}: run {rd.name} was started under another recipe ({_diff_text(staged, recipe)}); "
                "rerun with its original settings to finish it, or pass --restart to set it aside and start "
                "it clean"
            )
        echo(f"{rd.staging}: staged under another recipe; moved aside to {rd.set_aside()}")
    rd.staging.mkdir(parents=True, exist_ok=True)
    rd.stage(recipe)
    done = rd.finished_folds(folds)
    return [k for k in range(folds) if k not in done]
