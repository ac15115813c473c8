"""``python -m slm_sweep.tune``: the command line of cli.py."""

import sys

from slm_sweep.tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
