"""What every task provides; :mod:`.classification` and :mod:`.segmentation` fill it in."""

from __future__ import annotations


class Task:
    """One task. Subclasses are stateless singletons (``CLASSIFICATION``, ``SEGMENTATION``).

    Methods are grouped by who asks: the trainer (targets, loss, epoch metric, validation),
    the store (fold files), fusion and compare (scores), the report (summaries), predict (writers).
    """

    name: str = ""

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ training (the trainer asks these)

    # ------------------------------------------------------------------ store, fusion, report, predict
