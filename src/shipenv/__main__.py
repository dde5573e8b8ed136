import sys

from shipenv.cli import main

sys.exit(main())
