"""``python -m archscale ...`` (and ``torchrun -m archscale train ...``) run the CLI."""

import sys

from archscale.cli import main

sys.exit(main())
