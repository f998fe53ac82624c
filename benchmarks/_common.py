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
    """Milliseconds of each of `reps` calls of step(): the package's one timer (CUDA events and
    one synchronize at the end on a GPU, time.perf_counter on the CPU)."""
    from sparsedistill._timing import time_calls_ms
    return time_calls_ms(step, reps, device)


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


def copy_bandwidth_gbps(device: str, nbytes: int | None = None, reps: int | None = None) -> float | None:
    """Achievable memory bandwidth: a large copy on the device (all torch threads on CPU),
    (read + write) / median time. Default 1 GiB x 20 on CUDA, 256 MiB x 10 on CPU."""
    if nbytes is None:
        nbytes = (1 << 30) if device == "cuda" else (256 << 20)
    reps = reps or (20 if device == "cuda" else 10)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = percentile(time_steps(lambda: dst.copy_(src), device, reps), 50)
    src = dst = None  # free both before handing the memory back
    if device == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


_FLUSH: dict = {}


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's last-level cache (sysfs), or None."""
    best = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            with open(os.path.join(base, idx, "size")) as f:
                txt = f.read().strip().upper()
            mult = {"K": 1024, "M": 1024 ** 2}.get(txt[-1], 1)
            size = int(txt.rstrip("KM")) * mult
            best = size if best is None else max(best, size)
    except (OSError, ValueError):
        pass
    return best


def flush_cache(device: str) -> None:
    """Evicts the caches (untimed, between repeats): writes a buffer of twice the last-level
    cache (CUDA: the L2, at least 128 MiB; CPU: the LLC, within 64 MiB..1 GiB, since a VM may
    report its host's whole cache). 256 MiB was too little on a VM reporting a 480 MiB LLC: a
    64 MiB tensor read 18% faster after it than after a 2 GiB flush."""
    if device not in _FLUSH:
        if device == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
            nbytes = max(2 * (l2 or 0), 128 * MiB)
        else:
            nbytes = min(max(2 * (last_level_cache_bytes() or 0), 64 * MiB), 1024 * MiB)
        _FLUSH[device] = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    _FLUSH[device].zero_()


# ----------------------------------------------------------------------------- isolation

_MP_CONTEXT = []


def _isolation_context():
    """A fork server that has imported torch and sparsedistill (and never ran an op, so it
    holds no OpenMP threads) where Linux has one: each child is a fresh fork of it, ready in
    milliseconds instead of the seconds of a spawned interpreter's imports. Else spawn."""
    if not _MP_CONTEXT:
        try:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["torch", "sparsedistill"])
        except ValueError:
            ctx = multiprocessing.get_context("spawn")
        _MP_CONTEXT.append(ctx)
    return _MP_CONTEXT[0]


def run_isolated(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a fresh process (fn must be importable at module level); its
    result comes back pickled. A child that dies (killed for memory, say) raises."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=_isolation_context()) as pool:
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


def csv_path(path: str, fields: list[str], area: str) -> str:
    """Every benchmark may be handed the same --csv: a file that already holds another schema
    gets this benchmark's rows in a sibling, <name>.<area>.csv, instead of misaligned columns."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path) as f:
            if f.readline().strip() != ",".join(fields):
                return os.path.splitext(path)[0] + f".{area}.csv"
    return path


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- the suite
# One schema for every area's rows (python -m benchmarks writes them to one CSV and JSON).
ROW_FIELDS = ["area", "kernel", "provider", "case", "size", "sparsity", "batch", "dtype", "device",
              "status", "p50_ms", "p20_ms", "p80_ms", "reps", "peak_bytes", "stock_provider",
              "speedup_vs_stock", "speedup_vs_compile", "gbps", "gflops", "frac_copy_bw",
              "check", "note"]
MACHINE_FIELDS = ["cpu_model", "cores", "gpu_name", "torch_version", "git_commit", "timestamp"]
CSV_COLUMNS = ROW_FIELDS + MACHINE_FIELDS
COMPILE_PROVIDER = "torch_compile"


def suite_row(area: str, kernel: str, provider: str, case: str, *, device: str, dtype: str,
              size: int | None = None, sparsity: float | None = None, batch: int | None = None,
              result: dict | None = None, nbytes: int | None = None, flops: int | None = None,
              stock: str | None = None, check: str = "", note: str = "") -> dict:
    """A row of the common schema from one measurement (`result`: what measure() returned, a
    dict with p20/p50/p80_ms, reps, peak_bytes, or an "error"; "unsupported: ..." and
    "skipped: ..." errors make a skipped row). nbytes / flops: the work of one call, from which
    derive_suite() makes GB/s and GFLOP/s."""
    row = {k: None for k in ROW_FIELDS}
    row.update(area=area, kernel=kernel, provider=provider, case=case, size=size, sparsity=sparsity,
               batch=batch, dtype=dtype, device=device, stock_provider=stock, check=check,
               note=note, bytes=nbytes, flops=flops, status="ok")
    result = result or {}
    if "error" in result:
        err = str(result["error"])
        skipped = err.startswith(("unsupported", "skipped"))
        row["status"] = "skipped" if skipped else "error"
        err = err[len("skipped: "):] if err.startswith("skipped: ") else err
        row["note"] = (note + "; " if note else "") + err
    for k in ("p50_ms", "p20_ms", "p80_ms", "reps", "peak_bytes"):
        if k in result:
            row[k] = result[k]
    return row


def skipped_row(area: str, kernel: str, provider: str, device: str, reason: str,
                stock: str | None = None) -> dict:
    """One row saying a provider did not run in this area (a missing peer, a CUDA-only path)."""
    return suite_row(area, kernel, provider, "*", device=device, dtype="*", stock=stock,
                     result={"error": f"skipped: {reason}"})


def derive_suite(rows: list[dict], copy_bw: float | None) -> None:
    """Speedup over the row's stock provider and over torch.compile of it, measured in the same
    run on the same case; GB/s and GFLOP/s from the row's bytes and flops; GB/s as a fraction
    of the copy bandwidth measured by the run."""
    def key(r):
        return (r["area"], r["kernel"], r["case"], r["dtype"], r["sparsity"], r["batch"])
    p50 = {key(r) + (r["provider"],): r["p50_ms"] for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok" or not r["p50_ms"]:
            continue
        base = p50.get(key(r) + (r["stock_provider"],)) if r["stock_provider"] else None
        comp = p50.get(key(r) + (COMPILE_PROVIDER,))
        r["speedup_vs_stock"] = base / r["p50_ms"] if base else None
        r["speedup_vs_compile"] = comp / r["p50_ms"] if comp else None
        sec = r["p50_ms"] * 1e-3
        r["gbps"] = r["bytes"] / sec / 1e9 if r.get("bytes") else None
        r["gflops"] = r["flops"] / sec / 1e9 if r.get("flops") else None
        r["frac_copy_bw"] = r["gbps"] / copy_bw if (r["gbps"] and copy_bw) else None


class Progress:
    """A progress bar on stderr: tqdm when it is installed, else a plain one (one line per
    step when stderr is not a terminal). total grows as the areas plan their jobs."""

    def __init__(self, enabled: bool = True):
        import sys
        self.enabled, self.total, self.done, self._bar = enabled, 0, 0, None
        self._stream, self._tty = sys.stderr, sys.stderr.isatty()
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=0, file=sys.stderr, unit="job", dynamic_ncols=True,
                                 bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
            except ImportError:
                self._bar = None

    def add(self, n: int) -> None:
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def step(self, label: str) -> None:
        """Call before a job starts: shows the job's label."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(label[:48], refresh=True)
            return
        width, frac = 28, self.done / max(self.total, 1)
        bar = "#" * int(width * frac) + "." * (width - int(width * frac))
        line = f"[{bar}] {self.done}/{self.total} {label}"
        self._stream.write(("\r" + line[:110].ljust(110)) if self._tty else line + "\n")
        self._stream.flush()

    def finished(self) -> None:
        """Call after a job ends."""
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._tty:
            self._stream.write("\n")
            self._stream.flush()


class SuiteContext:
    """What an area needs from the runner: the device, the mode (tiny / quick / full), the
    provider filter, the copy bandwidth, and a place for correctness checks."""

    def __init__(self, device: str, mode: str, providers: set | None = None,
                 copy_bw: float | None = None, isolate: bool = True):
        self.device, self.mode, self.providers = device, mode, providers
        self.copy_bw, self.isolate = copy_bw, isolate
        self.checks: list[dict] = []

    def wants(self, provider: str) -> bool:
        if self.providers is not None:
            return provider in self.providers
        return not (self.mode == "tiny" and provider == COMPILE_PROVIDER)  # tiny: no compiles

    def pick(self, by_mode: dict):
        return by_mode[self.mode]

    def call(self, fn, *args):
        """fn(*args), in a fresh process on CPU when measurements are isolated (peak RSS)."""
        if self.device == "cpu" and self.isolate:
            try:
                return run_isolated(fn, *args)
            except Exception as e:  # the child died
                return {"error": f"child process failed: {type(e).__name__}: {e}"[:160]}
        return fn(*args)


def git_commit(repo: str) -> str:
    """`git rev-parse HEAD` of the repository (with "-dirty" when the tree has changes)."""
    import subprocess
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + "-dirty" if dirty else sha) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def script_info(**extra) -> dict:
    """The header of a standalone benchmark script's results (machine, torch, threads, commit)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(machine=cpu_model(), torch=torch.__version__, threads=torch.get_num_threads(),
                commit=git_commit(repo), **extra)


def write_script_results(out_dir: str, name: str, payload: dict, lines: list) -> str:
    """Writes <out_dir>/<stamp>_<name>.json (payload) and .md (lines), prints the markdown;
    returns the path without its extension."""
    import json
    import time
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{time.strftime('%Y%m%d-%H%M%S')}_{name}")
    with open(base + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {base}.md, .json")
    return base


def run_machine(device: str, repo: str) -> dict:
    """The machine and software of a run, for the CSV columns and the JSON header."""
    info = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda or "",
            "python": platform.python_version(), "git_commit": git_commit(repo),
            "device": device, "detail": machine_info(device)["detail"]}
    return info
