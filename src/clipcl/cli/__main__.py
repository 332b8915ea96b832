"""``python -m clipcl.cli``."""

from clipcl.cli import main

main()
