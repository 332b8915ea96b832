"""The Slurm backend: submitit job arrays, per-task job chains, state tracking, sbatch scripts.

This package is the only place in clipcl that imports submitit (lazily, in
:mod:`clipcl.slurm.submit`). :mod:`clipcl.slurm.settings` is plain configuration that the sweep
schema embeds; :mod:`clipcl.slurm.commands` wraps Slurm's command-line tools.
"""

from clipcl.slurm.settings import SlurmSettings, sbatch_flags, submitit_parameters

__all__ = ["SlurmSettings", "sbatch_flags", "submitit_parameters"]
