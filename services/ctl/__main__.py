"""`python -m services.ctl ...`: the same as the `taskctl` console script."""

from __future__ import annotations

import sys

from services.ctl.main import main

sys.exit(main())
