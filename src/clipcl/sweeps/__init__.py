"""Sweep files: strict loading and pure expansion into chains."""

from clipcl.sweeps.expand import ChainEntry, expand
from clipcl.sweeps.schema import Resources, SweepFile, load_sweep

__all__ = ["ChainEntry", "Resources", "SweepFile", "expand", "load_sweep"]
