"""Helpers shared by the benchmarks: machine info, timing, peak memory, bandwidth, output files.

Nothing here knows about a particular op: a benchmark hands in a zero-argument `step` callable
(one forward+backward, say) and gets times or memory back.
"""
from __future__ import annotations

import concurrent.futures
import csv
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import resource
import time

import torch

MiB = 1024 ** 2


# ----------------------------------------------------------------------------- machine

def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    return name


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    """Device name (what the CSV calls device_name) and the software versions."""
    info = {"torch_version": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["device_name"] = props.name
        info["detail"] = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                          f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda}")
    else:
        threads = torch.get_num_threads()
        info["device_name"] = f"{cpu_model()} ({threads} threads)"
        info["detail"] = (f"{cpu_model()}, torch threads {threads}, "
                          f"os.cpu_count {os.cpu_count()}")
    return info


# ----------------------------------------------------------------------------- timing

def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize_ms(samples: list[float]) -> dict:
    return {"p20_ms": percentile(samples, 20), "p50_ms": percentile(samples, 50),
            "p80_ms": percentile(samples, 80), "reps": len(samples)}


def time_steps(step, device: str, reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls of step(). CUDA: events around each call, one
    synchronize at the end (no host sync between reps). CPU: time.perf_counter."""
    if device == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


# ----------------------------------------------------------------------------- memory

def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the process's peak RSS (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _settle_heap() -> None:
    """Make RSS track live data: return free heap to the OS (glibc keeps it mapped) and serve
    every block >= 128 KiB by its own mmap from now on (glibc otherwise raises that threshold
    as big blocks are freed, and a step's buffers may land in fragmented, resident heap)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixed value: no dynamic adjustment)
    except (OSError, AttributeError):
        pass


def cpu_peak_extra_bytes(step) -> tuple[int, str]:
    """Peak RSS growth of one step() over the RSS just before it (inputs already resident).

    Meant to run in a fresh child process (see run_isolated) as its last step (it changes the
    malloc settings), so that only this step's allocations move the high-water mark: the heap
    is settled first (_settle_heap), RSS is read
    from /proc/self/statm, the kernel's peak-RSS counter is reset (clear_refs), and after the
    step the peak is read back (VmHWM, or ru_maxrss where the reset is not allowed, which then
    also counts any earlier peak of the process). Returns (bytes, method)."""
    _settle_heap()
    time.sleep(0.05)  # the kernel's RSS counters lag frees a little; without a pause, pages
    before = _rss_bytes()  # freed just before can show in `before` or in the peak
    if _reset_peak_rss() and _proc_status_kib("VmHWM") is not None:
        time.sleep(0.05)
        step()
        time.sleep(0.05)
        return max(0, _proc_status_kib("VmHWM") * 1024 - before), "VmHWM after clear_refs"
    step()
    time.sleep(0.05)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(0, peak - before), "ru_maxrss (upper bound)"


def cuda_peak_extra_bytes(step) -> tuple[int, str]:
    """Peak of the caching allocator's allocated bytes during step() minus what was allocated
    just before it (the inputs): what the step needs on top of them, its outputs included."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before), "max_memory_allocated"


def peak_extra_bytes(step, device: str, repeats: int = 1, reset=None) -> tuple[int, str]:
    """The smallest of `repeats` measurements (see above) of one step each; reset() runs before
    each, to drop what the previous step left behind (a gradient, say). On CPU, RSS accounting
    of pages freed inside the step sometimes lags on a busy machine and a reading overcounts
    by whole buffers; the minimum of a few readings is the robust estimate."""
    best, method = None, ""
    for _ in range(max(repeats, 1)):
        if reset is not None:
            reset()
        nbytes, method = (cuda_peak_extra_bytes if device == "cuda" else cpu_peak_extra_bytes)(step)
        best = nbytes if best is None else min(best, nbytes)
    return best, method


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 30, reps: int = 20) -> float | None:
    """Achievable memory bandwidth: a large device-to-device copy, (read + write) / time."""
    if device != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = percentile(time_steps(lambda: dst.copy_(src), device, reps), 50)
    src = dst = None  # free both before handing the memory back
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- isolation

def run_isolated(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a fresh spawned process (fn must be importable at module level);
    its result comes back pickled. A child that dies (killed for memory, say) raises."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# ----------------------------------------------------------------------------- output

def fmt(x, spec: str = ".2f", missing: str = "n/a") -> str:
    """format(x, spec), or `missing` for None; a trailing "x" in spec is appended: 1.50x."""
    if x is None:
        return missing
    return format(x, spec[:-1]) + "x" if spec.endswith("x") else format(x, spec)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """columns: (header, key); values are taken as already-formatted strings."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for _, k in columns) + " |")
    return "\n".join(lines)


def append_csv(path: str, rows: list[dict], fields: list[str]) -> None:
    """Append rows; the header is written when the file is new or empty."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
