"""Fusion of stored members (SPEC §6): expressions, rules, metrics.

:func:`select` turns an expression into members (checking counts, fingerprints, ids and
labels); :func:`fuse` applies a rule and scores the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..store import Member, Store, more_runs_command, split_key
from .expr import ExpressionError, Term, format_terms, parse, term_text
from .metrics import per_class, scores_table
from .rules import RULES
from .segmentation import segmentation_scores

__all__ = ["RULES", "ExpressionError", "FusionResult", "Term", "fuse", "fuse_members", "parse", "select"]


class IncompatibleMembers(UsageError):
    """Members that cannot be fused: other dataset fingerprint, other samples or labels."""


@dataclass
class FusionResult:
    expression: str
    rule: str
    members: list[Member]
    labels: np.ndarray
    scores: np.ndarray
    fold_of: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    calibration: str = "none"

    def row(self) -> dict:
        rule = self.rule if self.calibration == "none" else f"{self.rule} ({self.calibration})"
        return {"expression": self.expression, "rule": rule, "members": len(self.members), **self.metrics}

    @property
    def task(self) -> str:
        return "segmentation" if self.scores.ndim == 4 else "classification"

    def add_ci(self, resamples: int) -> None:
        """95% stratified bootstrap intervals of accuracy, macro-F1 and AUC (see :mod:`.stats`)."""
        from .stats import bootstrap_ci

        if self.task == "segmentation":
            raise UsageError(
                "--ci: bootstrap intervals are for classification members; segmentation tables give "
                "the std over images (dice_std, hd95_std) and over folds"
            )
        self.metrics.update(bootstrap_ci(self.labels, self.scores, resamples=resamples))


def select(store: Store, dataset: str, expr: str, split: str = "fold") -> tuple[list[Term], list[Member]]:
    """The members an expression names: the first COUNT runs of each label."""
    terms = parse(expr)
    members: list[Member] = []
    for t in terms:
        runs = store.runs(dataset, t.label)
        if len(runs) < t.count:
            # the spec the members were trained from (seg:PATH, folder:PATH), else the catalog's spelling
            recorded = [
                m.dataset_spec for label in store.labels(dataset) for m in store.metas(dataset, label) if m.dataset_spec
            ]
            from ..data.sources import spec_for

            spec = recorded[0] if recorded else spec_for(dataset)
            optimizer, variant = split_key(t.label)
            commands = [m.command for m in store.metas(dataset, t.label) if m.command] if runs else []
            command = (
                more_runs_command(commands[0], n=t.count, members_dir=str(store.root))
                if commands
                else f"ens train --dataset {spec} --opt {optimizer}{f' --variant {variant}' if variant else ''} "
                f"--n {t.count} --members-dir {store.root}"
            )
            raise UsageError(
                f"{term_text(t.label, t.count)} (column {t.column}) asks for {t.count} "
                f"{t.label} members of {dataset}, but {len(runs)} exist in {store.root}; add the rest (with the "
                f"recipe of those there) with:\n  {command}"
            )
        members += store.members(dataset, t.label, t.count, split=split)
    return terms, members


def aligned(members: list[Member]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack members' probabilities in one sample order; refuse members that do not match."""
    ref = members[0]
    for m in members[1:]:
        if m.fingerprint != ref.fingerprint:
            raise IncompatibleMembers(
                f"{m.name} was trained on another version of the dataset than {ref.name} "
                f"(fingerprint {m.fingerprint} vs {ref.fingerprint}); they cannot be fused"
            )
        if m.classes != ref.classes:
            raise IncompatibleMembers(f"{m.name} and {ref.name} have different classes")
        if m.probs.shape[1:] != ref.probs.shape[1:]:
            raise IncompatibleMembers(
                f"{m.name} predicted maps of shape {m.probs.shape[2:]} and {ref.name} of "
                f"{ref.probs.shape[2:]} (another --size); they cannot be fused"
            )
    order0 = np.argsort(ref.ids, kind="stable")
    ids = ref.ids[order0]
    stack = [ref.probs[order0]]
    for m in members[1:]:
        order = np.argsort(m.ids, kind="stable")
        if len(m.ids) != len(ids) or not np.array_equal(m.ids[order], ids):
            raise IncompatibleMembers(f"{m.name} and {ref.name} predicted different samples")
        if not np.array_equal(m.labels[order], ref.labels[order0]):
            raise IncompatibleMembers(f"{m.name} and {ref.name} disagree on the labels of the same samples")
        if not np.array_equal(m.fold_of[order], ref.fold_of[order0]):
            raise IncompatibleMembers(f"{m.name} and {ref.name} put the same samples in other folds")
        stack.append(m.probs[order])
    return np.stack(stack), ref.labels[order0], ref.fold_of[order0], ids


def fuse_members(
    members: list[Member], rule: str = "sum", expression: str = "", calibration: str = "none"
) -> FusionResult:
    """Apply ``rule`` to the members (temperature-scaled first when ``calibration`` says so) and score it."""
    from .calibrate import calibrate

    if rule not in RULES:
        raise UsageError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    if members[0].meta.task == "segmentation":
        if calibration != "none":
            raise UsageError(f"--calibrate {calibration}: temperature scaling is for classification members")
        probs, labels, fold_of, _ = aligned(members)
        scores = RULES[rule](probs.astype(np.float32))  # the sum rule: the mean of the probability maps
        result = FusionResult(expression, rule, members, labels, scores, fold_of)
        result.metrics = segmentation_scores(labels, scores, fold_of)
        return result
    probs, labels, fold_of, _ = aligned(calibrate(members, calibration))
    scores = RULES[rule](probs)
    result = FusionResult(expression, rule, members, labels, scores, fold_of, calibration=calibration)
    result.metrics = scores_table(labels, scores, fold_of)
    return result


def fuse(store: Store, dataset: str, expr: str, rule: str = "sum", calibration: str = "none") -> FusionResult:
    terms, members = select(store, dataset, expr)
    return fuse_members(members, rule, format_terms(terms), calibration)


def details(result: FusionResult) -> tuple[list[dict], np.ndarray]:
    return per_class(result.labels, result.scores, result.members[0].classes)
