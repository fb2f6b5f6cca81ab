"""`python -m pyserving` is the `pyserving` command."""

import sys

from pyserving.cli import main

sys.exit(main())
