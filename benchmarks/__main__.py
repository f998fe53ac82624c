"""`python -m benchmarks [--quick | --full] [--only AREA] [--device cpu|cuda]`: every benchmark."""
import sys

from .suite import main

if __name__ == "__main__":  # (the measurement processes import this module too)
    sys.exit(main())
