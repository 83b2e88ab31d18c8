"""``python -m bitnet``: the command-line interface (see :mod:`bitnet.cli`)."""
from .cli import main

raise SystemExit(main())
