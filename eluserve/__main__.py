"""`python -m eluserve`: the same as the `eluserve` command."""

import sys

from eluserve.cli import main

sys.exit(main())
