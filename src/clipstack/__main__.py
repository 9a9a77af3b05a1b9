"""`python -m clipstack` (what `torchrun -m clipstack train` runs)."""

import sys

from clipstack.cli import main

sys.exit(main())
