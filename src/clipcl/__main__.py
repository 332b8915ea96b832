"""``python -m clipcl``: the command-line interface (same as the ``clipcl`` script)."""

from clipcl.cli import main

main()
