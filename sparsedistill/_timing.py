"""One timer for everything that measures: sparsify's per-layer decision, train.metrics'
latency, the LM demo's speeds and the benchmark suite."""
from __future__ import annotations

import random
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
    return median(time_calls_ms(fn, reps, device, warmup=warmup, min_time_s=min_time_s))


def interleaved_times_ms(fns: dict, min_rounds: int, device: str = "cpu", *, min_time_s: float = 0.0,
                         max_rounds: int | None = None, warmup_rounds: int = 2,
                         seed: int = 0) -> dict[str, list[float]]:
    """Each fn once per round, in an order shuffled every round (so a slow spell of a noisy
    machine hits all of them, and none always runs on the caches another left), after
    `warmup_rounds` untimed rounds; at least `min_rounds` rounds and `min_time_s` in all, at
    most `max_rounds`. Returns {name: [ms of round 0, round 1, ...]}."""
    for _ in range(warmup_rounds):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    keys, order = list(fns), random.Random(seed)
    start, rounds = time.perf_counter(), 0
    while (rounds < min_rounds or time.perf_counter() - start < min_time_s) and rounds != max_rounds:
        rounds += 1
        order.shuffle(keys)
        for k in keys:
            times[k].append(time_calls_ms(fns[k], 1, device)[0])
    return times


def median(values):
    """The median of a list (the upper one of an even count), as every timer here reports."""
    return sorted(values)[len(values) // 2]
