import sys

from pipeline.run_cli import main

sys.exit(main())
