"""``python -m e2emfd`` (also what ``torchrun -m e2emfd`` runs)."""

import sys

from e2emfd.cli.main import main

sys.exit(main())
