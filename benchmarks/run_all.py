"""Kept for old commands: `python benchmarks/run_all.py [args]` runs the suite, i.e. the same
as `python -m benchmarks [args]` from the repository root (see benchmarks/suite.py)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    from benchmarks.suite import main
    sys.exit(main())
