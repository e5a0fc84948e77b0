"""``python -m repro.resnet``: see ``repro.resnet.cli``."""

import sys

from .cli import main

sys.exit(main())
