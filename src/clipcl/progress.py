"""Progress events of a running chain (kept free of heavy imports: the CLI loads it eagerly)."""

from __future__ import annotations


class ChainProgress:
    """Receives progress events; the base class ignores them (the CLI draws rich bars)."""

    def message(self, text: str) -> None: ...

    def task_started(self, index: int, name: str, steps: int) -> None: ...

    def step(self, index: int, step: int, steps: int, loss: float) -> None: ...

    def task_finished(self, index: int, name: str, accuracies: list[float]) -> None: ...
