"""python -m slmkit ... is the `slm` command."""

import sys

from .cli import main

sys.exit(main())
