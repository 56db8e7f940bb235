"""``python -m vlmlens`` runs the command line."""

import sys

from vlmlens.cli import main

sys.exit(main())
