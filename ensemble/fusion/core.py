"""The fusion core (SPEC §6): from an expression to members, from members to one scored prediction.

:func:`select` turns an expression into members (checking counts); :func:`aligned` stacks
them in one sample order (checking fingerprints, ids, targets and folds); :func:`fuse_members`
applies a rule and has the members' task score the result. Selection returns data: a term
asking for more members than exist raises :class:`MissingMembers` carrying the command that
would train the rest, and the CLI phrases the advice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.sources import spec_for
from ..errors import UsageError
from ..store import Member, Store, more_runs_command, split_key
from ..tasks import Task, get_task
from .expr import Term, format_terms, parse, term_text
from .metrics import per_class


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
    task_name: str = "classification"

    def row(self) -> dict:
        rule = self.rule if self.calibration == "none" else f"{self.rule} ({self.calibration})"
        return {"expression": self.expression, "rule": rule, "members": len(self.members), **self.metrics}

    @property
    def task(self) -> Task:
        """The task of the fused members, which scores, compares and predicts for them."""
        return get_task(self.task_name)

    def add_ci(self, resamples: int) -> None:
        """95% bootstrap intervals of the task's metrics (classification: stratified, see :mod:`.stats`)."""
        self.metrics.update(self.task.intervals(self.labels, self.scores, resamples))


class MissingMembers(UsageError):
    """A term asks for more members than the store holds; ``command`` would train the rest."""

    def __init__(self, *, term: Term, dataset: str, found: int, root: Path, command: str) -> None:
        self.term, self.dataset, self.found, self.root, self.command = term, dataset, found, root, command
        super().__init__(
            f"{term_text(term.label, term.count)} (column {term.column}) asks for {term.count} {term.label} "
            f"members of {dataset}, but {found} exist in {root}"
        )


def select(store: Store, dataset: str, expr: str, split: str = "fold") -> tuple[list[Term], list[Member]]:
    """The members an expression names: the first COUNT runs of each label (their dataset's content record
    checked: :meth:`ensemble.store.Store.check_members_content`)."""
    terms = parse(expr)
    members: list[Member] = []
    for t in terms:
        runs = store.runs(dataset, t.label)
        if len(runs) < t.count:
            raise MissingMembers(
                term=t, dataset=dataset, found=len(runs), root=store.root, command=_more_command(store, dataset, t)
            )
        members += store.members(dataset, t.label, t.count, split=split)
    store.check_members_content(dataset, members)
    return terms, members


def _more_command(store: Store, dataset: str, term: Term) -> str:
    """The ``ens train`` command that adds the missing members of ``term``: the label's recorded command (its
    whole recipe) when it has members, else the dataset spec the store's members were trained from."""
    commands = [m.command for m in store.metas(dataset, term.label) if m.command]
    if commands:
        return more_runs_command(commands[0], n=term.count, members_dir=str(store.root))
    # the spec the members were trained from (seg:PATH, folder:PATH), else the catalog's spelling
    recorded = [
        m.dataset_spec for label in store.labels(dataset) for m in store.metas(dataset, label) if m.dataset_spec
    ]
    spec = recorded[0] if recorded else spec_for(dataset)
    optimizer, variant = split_key(term.label)
    return (
        f"ens train --dataset {spec} --opt {optimizer}{f' --variant {variant}' if variant else ''} "
        f"--n {term.count} --members-dir {store.root}"
    )


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

    task = get_task(members[0].meta.task)
    combine = task.fusion_rule(rule)
    task.check_calibration(calibration)
    probs, labels, fold_of, _ = aligned(calibrate(members, calibration))
    # float16 maps (segmentation) are fused in float32; the sum rule is then the mean of the maps
    scores = combine(probs.astype(np.float32) if probs.dtype == np.float16 else probs)
    result = FusionResult(
        expression, rule, members, labels, scores, fold_of, calibration=calibration, task_name=task.name
    )
    result.metrics = {
        **task.fused_scores(labels, scores, fold_of),
        **task.named_scores(labels, scores, members[0].classes),
    }
    return result


def fuse(store: Store, dataset: str, expr: str, rule: str = "sum", calibration: str = "none") -> FusionResult:
    terms, members = select(store, dataset, expr)
    return fuse_members(members, rule, format_terms(terms), calibration)


def details(result: FusionResult) -> tuple[list[dict], np.ndarray]:
    return per_class(result.labels, result.scores, result.members[0].classes)
