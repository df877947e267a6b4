"""``python -m replicate`` = the ``replicate`` command."""

import sys

from .cli import main

sys.exit(main())
