"""`python -m boltzflow.cli`: the `boltzflow` command."""

import sys

from boltzflow.cli import main

sys.exit(main())
