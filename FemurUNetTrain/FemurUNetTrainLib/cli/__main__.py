"""``python -m FemurUNetTrainLib.cli``: the ``femurunet`` command."""
import sys

from . import main

sys.exit(main())
