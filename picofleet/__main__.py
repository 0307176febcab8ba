"""``python -m picofleet``: same as the ``picofleet`` console script."""

import sys

from picofleet.cli import main

sys.exit(main())
