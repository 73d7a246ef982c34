"""``python -m kdforge`` (and ``torchrun -m kdforge``): the ``kdforge`` command."""

import sys

from kdforge.app.cli import main

sys.exit(main())
