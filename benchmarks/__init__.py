"""The benchmark suite of sparsedistill: `python -m benchmarks` (see benchmarks/suite.py).

Areas (each a bench_*.py script; all but fused_linear also run on their own): distill,
fused_linear, prune, sparse_linear.
"""
AREAS = ("distill", "fused_linear", "prune", "sparse_linear")
