"""`python -m hashcheck_bench`: see hashcheck_bench.cli."""

from __future__ import annotations

import sys

from hashcheck_bench.cli import main

sys.exit(main())
