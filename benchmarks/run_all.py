"""Run every benchmark with the same arguments.

    python benchmarks/run_all.py [args of bench_distill.py, e.g. --quick --csv out.csv]

Each benchmark runs as its own process (a crash in one does not stop the others); the exit
status is the first non-zero one.
"""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["bench_distill.py", "bench_prune.py"]  # later: pruning, sparse matmul, ... (same command-line args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    status = 0
    for script in BENCHMARKS:
        print(f"=== {script} {' '.join(argv)}", flush=True)
        rc = subprocess.call([sys.executable, os.path.join(HERE, script), *argv])
        if rc:
            print(f"=== {script} exited with status {rc}", flush=True)
            status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
