"""The benchmark suite of sparsedistill: `python -m benchmarks` (see benchmarks/suite.py).

Areas (each a bench_*.py script that also runs on its own): distill, prune, sparse_linear.
"""
AREAS = ("distill", "prune", "sparse_linear")
