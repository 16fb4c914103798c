"""`python -m data_prep prepare ...`: the same command as `nws data prepare ...`."""

import sys

from data_prep.cli import main

if __name__ == "__main__":
    sys.exit(main())
