"""`python -m incremental ...`: the same command as `nws incremental ...`."""

import sys

from incremental.cli import main

if __name__ == "__main__":
    sys.exit(main())
