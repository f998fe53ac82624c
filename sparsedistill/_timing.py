"""One timer for everything that measures: sparsify's per-layer decision, train.metrics'
latency and the benchmark suite."""
from __future__ import annotations

import time

import torch


def time_calls_ms(fn, reps: int, device: str = "cpu", *, warmup: int = 0,
                  min_time_s: float = 0.0) -> list[float]:
    """Milliseconds of each of at least `reps` calls of fn() after `warmup` untimed calls
    (more calls until `min_time_s` has passed, on the CPU). CUDA: events around each call and
    one synchronize at the end, so no host sync between calls. CPU: time.perf_counter."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    times = []
    deadline = time.perf_counter() + min_time_s
    while len(times) < reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(fn, reps: int, device: str = "cpu", *, warmup: int = 1, min_time_s: float = 0.0) -> float:
    """The median of time_calls_ms."""
    times = sorted(time_calls_ms(fn, reps, device, warmup=warmup, min_time_s=min_time_s))
    return times[len(times) // 2]
