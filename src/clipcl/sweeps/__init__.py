"""Sweep files: strict loading and pure expansion into chains."""

from typing import Any

from clipcl.sweeps.schema import Resources, SweepFile, load_sweep

__all__ = ["ChainEntry", "Resources", "SweepFile", "expand", "load_sweep"]


def __getattr__(name: str) -> Any:
    # expansion validates chains against the model/method registries (torch, open_clip):
    # import it only when used, so reading a sweep file stays cheap.
    if name in {"ChainEntry", "expand"}:
        from clipcl.sweeps import expansion

        return getattr(expansion, name)
    raise AttributeError(name)
