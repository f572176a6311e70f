"""`python -m nervi_hpc.cli`: the nervi-hpc command."""

import sys

from . import main

sys.exit(main())
