"""`python -m stretto.cli`: the same as the `stretto` command."""

import sys

from stretto.cli import main

sys.exit(main())
