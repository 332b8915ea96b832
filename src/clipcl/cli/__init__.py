"""The ``clipcl`` command line: thin commands, one per verb; the work lives in the packages."""

from clipcl.cli import chain as _chain  # noqa: F401  (registers the commands)
from clipcl.cli import data as _data  # noqa: F401  (registers the commands)
from clipcl.cli import predict as _predict  # noqa: F401  (registers the commands)
from clipcl.cli import report as _report  # noqa: F401  (registers the commands)
from clipcl.cli import slurm as _slurm  # noqa: F401  (registers the commands)
from clipcl.cli import store as _store  # noqa: F401  (registers the commands)
from clipcl.cli import sweep as _sweep  # noqa: F401  (registers the commands)
from clipcl.cli.chain import _zeroshot_table
from clipcl.cli.common import app, main

__all__ = ["_zeroshot_table", "app", "main"]
