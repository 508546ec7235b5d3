#!/usr/bin/env python3
"""Benchmark the Python reference implementation (pymfp 1.0.0, import name `mfp`).

Invoked by `cargo xtask bench --vs-pymfp` as

    <venv>/bin/python bench_pymfp.py --json OUT.json [--quick]

after `python3 -m venv target/pymfp-venv && target/pymfp-venv/bin/pip install pymfp==1.0.0`.

Measurements (each the median of --runs runs; 3 by default, 1 with --quick):

  blocking_send[size]             mfp_send() on one channel, trivial sync receiver;
                                  msgs/s plus per-send latency p50/p99 in µs.
  blocking_send_1000_channels_64  mfp_send() round-robin over 1,000 channels (64 B);
                                  includes the time it took to establish them.
  async_send[size]                await mfp_send_async() sequentially on one channel,
                                  `async def` receiver (pymfp routes coroutine
                                  receivers through asyncio.wait_for).
  establish                       time to establish 1,000 channels; the 10,000 figure
                                  is EXTRAPOLATED (pymfp rebuilds its whole Merkle tree
                                  on every establish_channel, so the cost per channel
                                  grows linearly and the total quadratically; we fit
                                  T(n) = a*n + b*n^2 to the cumulative timings).
  bytes_per_channel               tracemalloc delta per channel after establishing
                                  1,000 channels (measured in a fresh subprocess; an RSS
                                  delta is reported alongside for information).
  sqlite_send_64                  mfp_send() with RuntimeConfig.storage set to an
                                  encrypted SQLite DB in a temp dir; {"error": ...} if
                                  this fails.

Topology: every runtime has exactly two agents (sender and receiver); all N channels
are established between that pair (max_channels_per_agent is raised accordingly), so
per-channel figures do not include per-agent overhead.

RuntimeConfig overrides (pymfp defaults would otherwise interfere):
  max_message_rate=0 (unlimited; default 1000/s quarantines the sender),
  max_channels_per_agent=1_000_000 (default 100), max_agents=1_000_000,
  max_payload_size=2 MiB (default 1 MiB; a 1 MiB payload is allowed by the default,
  but we leave headroom).

The script only uses the standard library plus pymfp.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------

PAYLOAD_SIZES = [64, 1024, 65536, 1048576]
ASYNC_SIZES = [64, 1024]
N_CHANNELS = 1000
EXTRAPOLATE_TO = 10000
CHECKPOINT_EVERY = 50

# Per (measurement, run): (max iterations, time budget seconds).  The loop stops at
# whichever limit is hit first, but always does at least MIN_ITERS iterations.
MIN_ITERS = 20
FULL = {"budget_s": 1.5, "max_iters": {64: 20000, 1024: 20000, 65536: 5000, 1048576: 300}}
QUICK = {"budget_s": 0.4, "max_iters": {64: 5000, 1024: 5000, 65536: 1000, 1048576: 60}}
WARMUP = 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# pymfp helpers
# --------------------------------------------------------------------------------------

def make_config(storage=None):
    from mfp import RuntimeConfig

    kwargs = dict(
        max_message_rate=0,
        max_channels_per_agent=1_000_000,
        max_agents=1_000_000,
        max_payload_size=2 * 1024 * 1024,
    )
    if storage is not None:
        kwargs["storage"] = storage
    return RuntimeConfig(**kwargs)


def _sync_receiver(msg) -> None:  # trivial receiving callable
    pass


async def _async_receiver(msg) -> None:  # trivial async receiving callable
    pass


def new_pair(config=None, async_receiver: bool = False):
    """A fresh Runtime with a sender handle and a receiver handle."""
    from mfp import Runtime, bind

    rt = Runtime(config or make_config())
    sender = bind(rt, _sync_receiver)
    receiver = bind(rt, _async_receiver if async_receiver else _sync_receiver)
    return rt, sender, receiver


def establish_timed(rt, a, b, n: int):
    """Establish n channels between a and b; returns (channel ids, total s, checkpoints)."""
    channels = []
    checkpoints = []  # (n_so_far, cumulative seconds)
    est = rt.establish_channel
    aid, bid = a.agent_id, b.agent_id
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        channels.append(est(aid, bid))
        if i % CHECKPOINT_EVERY == 0 or i == n:
            checkpoints.append((i, time.perf_counter() - t0))
    total = time.perf_counter() - t0
    return channels, total, checkpoints


def shutdown(rt) -> None:
    try:
        rt.shutdown()
    except Exception:  # pragma: no cover - best effort
        pass
    gc.collect()


def percentile(sorted_vals, q: float) -> float:
    """Nearest-rank-with-interpolation percentile on an already sorted list."""
    if not sorted_vals:
        return float("nan")
    if len(sorted_vals) == 1:
        return float(sorted_vals[0])
    pos = (len(sorted_vals) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    frac = pos - lo
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def blocking_loop(send, handle, channels, payload: bytes, max_iters: int, budget_s: float,
                  min_iters: int = MIN_ITERS):
    """Time individual mfp_send calls; round-robin over `channels`."""
    nch = len(channels)
    for i in range(min(WARMUP, max_iters)):
        send(handle, channels[i % nch], payload)
    lat_ns = []
    append = lat_ns.append
    clock = time.perf_counter_ns
    deadline = clock() + int(budget_s * 1e9)
    start = clock()
    i = 0
    while i < max_iters:
        t = clock()
        send(handle, channels[i % nch], payload)
        t2 = clock()
        append(t2 - t)
        i += 1
        if i >= min_iters and t2 >= deadline:
            break
    elapsed = (clock() - start) / 1e9
    lat_ns.sort()
    return {
        "msgs_per_s": i / elapsed,
        "p50_us": percentile(lat_ns, 0.50) / 1e3,
        "p99_us": percentile(lat_ns, 0.99) / 1e3,
        "iterations": i,
    }


def median_of(runs: list[dict]) -> dict:
    """Median of each numeric key across runs (keys taken from the first run)."""
    out = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            out[k] = statistics.median(vals)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------

def bench_blocking(size: int, runs: int, prof) -> dict:
    from mfp import mfp_send

    payload = os.urandom(size)
    per_run = []
    for _ in range(runs):
        rt, a, b = new_pair()
        ch = rt.establish_channel(a.agent_id, b.agent_id)
        per_run.append(
            blocking_loop(mfp_send, a, [ch], payload, prof["max_iters"][size], prof["budget_s"])
        )
        shutdown(rt)
    res = median_of(per_run)
    res["runs_msgs_per_s"] = [r["msgs_per_s"] for r in per_run]
    return res


def bench_blocking_many_channels(runs: int, prof):
    """64 B sends round-robin over N_CHANNELS channels.  The establish timings from the
    same runs feed the `establish` result."""
    from mfp import mfp_send

    payload = os.urandom(64)
    per_run = []
    establish_runs = []
    for _ in range(runs):
        rt, a, b = new_pair()
        channels, total, checkpoints = establish_timed(rt, a, b, N_CHANNELS)
        establish_runs.append({"seconds": total, "checkpoints": checkpoints})
        # at least one full round-robin pass, so every channel is exercised
        r = blocking_loop(mfp_send, a, channels, payload,
                          max(prof["max_iters"][64] // 2, 2 * N_CHANNELS), prof["budget_s"],
                          min_iters=N_CHANNELS)
        r["establish_s"] = total
        per_run.append(r)
        shutdown(rt)
    res = median_of(per_run)
    res["channels"] = N_CHANNELS
    res["runs_msgs_per_s"] = [r["msgs_per_s"] for r in per_run]
    return res, establish_runs


def fit_quadratic(points):
    """Least squares fit of T(n) = a*n + b*n^2 (no intercept).  Returns (a, b)."""
    s11 = sum(float(n) ** 2 for n, _ in points)
    s12 = sum(float(n) ** 3 for n, _ in points)
    s22 = sum(float(n) ** 4 for n, _ in points)
    t1 = sum(float(n) * t for n, t in points)
    t2 = sum(float(n) ** 2 * t for n, t in points)
    det = s11 * s22 - s12 * s12
    if det == 0:
        return None
    a = (t1 * s22 - t2 * s12) / det
    b = (s11 * t2 - s12 * t1) / det
    return a, b


def summarize_establish(establish_runs) -> dict:
    seconds = statistics.median(r["seconds"] for r in establish_runs)
    # element-wise median of the cumulative checkpoints across runs
    npoints = min(len(r["checkpoints"]) for r in establish_runs)
    points = []
    for j in range(npoints):
        n = establish_runs[0]["checkpoints"][j][0]
        points.append((n, statistics.median(r["checkpoints"][j][1] for r in establish_runs)))
    fit = fit_quadratic(points)
    # marginal cost per channel over the last 10% of channels
    tail_start = [p for p in points if p[0] <= int(N_CHANNELS * 0.9)][-1]
    tail = points[-1]
    marginal = (tail[1] - tail_start[1]) / (tail[0] - tail_start[0])
    out = {
        "n": N_CHANNELS,
        "seconds": seconds,
        "per_channel_s": seconds / N_CHANNELS,
        "marginal_per_channel_s_at_n": marginal,
        "runs_seconds": [r["seconds"] for r in establish_runs],
    }
    if fit is not None:
        a, b = fit
        out["extrapolated_10000_s"] = a * EXTRAPOLATE_TO + b * EXTRAPOLATE_TO ** 2
        out["extrapolated_10000_method"] = (
            "EXTRAPOLATED, not measured: least-squares fit T(n)=a*n+b*n^2 to cumulative "
            f"establish times at n={CHECKPOINT_EVERY}..{N_CHANNELS} step {CHECKPOINT_EVERY} "
            "(pymfp's add_channel rebuilds the full Merkle tree, O(n) per channel)"
        )
        out["fit_a_s"] = a
        out["fit_b_s"] = b
    out["extrapolated_10000_linear_s"] = seconds / N_CHANNELS * EXTRAPOLATE_TO
    return out


async def _async_loop(send_async, handle, channel, payload, max_iters, budget_s):
    for _ in range(min(WARMUP, max_iters)):
        await send_async(handle, channel, payload)
    clock = time.perf_counter_ns
    lat_ns = []
    append = lat_ns.append
    deadline = clock() + int(budget_s * 1e9)
    start = clock()
    i = 0
    while i < max_iters:
        t = clock()
        await send_async(handle, channel, payload)
        t2 = clock()
        append(t2 - t)
        i += 1
        if i >= MIN_ITERS and t2 >= deadline:
            break
    elapsed = (clock() - start) / 1e9
    lat_ns.sort()
    return {
        "msgs_per_s": i / elapsed,
        "p50_us": percentile(lat_ns, 0.50) / 1e3,
        "p99_us": percentile(lat_ns, 0.99) / 1e3,
        "iterations": i,
    }


def bench_async(size: int, runs: int, prof) -> dict:
    from mfp import mfp_send_async

    payload = os.urandom(size)
    per_run = []
    for _ in range(runs):
        rt, a, b = new_pair(async_receiver=True)
        ch = rt.establish_channel(a.agent_id, b.agent_id)
        per_run.append(asyncio.run(
            _async_loop(mfp_send_async, a, ch, payload, prof["max_iters"][size], prof["budget_s"])
        ))
        shutdown(rt)
    res = median_of(per_run)
    res["receiver"] = "async def"
    res["runs_msgs_per_s"] = [r["msgs_per_s"] for r in per_run]
    return res


def bench_sqlite(runs: int, prof) -> dict:
    from mfp import mfp_send

    try:
        try:
            from mfp.storage.engine import StorageConfig
        except ImportError:
            from mfp.storage import StorageConfig  # type: ignore
        payload = os.urandom(64)
        per_run = []
        degraded = False
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="pymfp-bench-") as d:
                storage = StorageConfig(
                    db_path=os.path.join(d, "mfp.db"),
                    encrypt_at_rest=True,
                    master_key=os.urandom(32),
                )
                rt, a, b = new_pair(make_config(storage=storage))
                ch = rt.establish_channel(a.agent_id, b.agent_id)
                per_run.append(blocking_loop(mfp_send, a, [ch], payload,
                                             prof["max_iters"][64], prof["budget_s"]))
                # pymfp swallows storage write errors and only sets this flag
                degraded = degraded or bool(getattr(rt, "storage_degraded", False))
                shutdown(rt)
        res = median_of(per_run)
        res["storage_degraded"] = degraded
        res["runs_msgs_per_s"] = [r["msgs_per_s"] for r in per_run]
        return res
    except Exception as e:  # report, don't crash
        return {"error": f"{type(e).__name__}: {e}"}


# --------------------------------------------------------------------------------------
# Memory probe (runs in a fresh subprocess: `bench_pymfp.py --_memprobe`)
# --------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except Exception:
        import resource  # fallback: peak RSS (KiB on Linux)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memprobe() -> dict:
    import tracemalloc
    from mfp import mfp_send

    # warm up imports, caches, lazily created module state
    rt, a, b = new_pair()
    ch = rt.establish_channel(a.agent_id, b.agent_id)
    mfp_send(a, ch, b"x" * 64)
    shutdown(rt)

    # One traced establish run.  tracemalloc gives the Python-heap bytes still held by
    # the channels; the RSS delta (minus tracemalloc's own bookkeeping) is reported for
    # information only: it also contains allocator high-water/fragmentation left by
    # pymfp's per-establish Merkle-tree rebuilds.
    tracemalloc.start()
    rt, a, b = new_pair()
    gc.collect()
    rss0 = _rss_bytes()
    own0 = tracemalloc.get_tracemalloc_memory()
    t0, _ = tracemalloc.get_traced_memory()
    chans, seconds, _ = establish_timed(rt, a, b, N_CHANNELS)
    gc.collect()
    t1, _ = tracemalloc.get_traced_memory()
    own1 = tracemalloc.get_tracemalloc_memory()
    rss1 = _rss_bytes()
    tracemalloc.stop()
    alive = len(chans) == N_CHANNELS and rt is not None
    return {
        "tracemalloc_bytes_per_channel": (t1 - t0) / N_CHANNELS,
        "rss_bytes_per_channel": ((rss1 - rss0) - (own1 - own0)) / N_CHANNELS,
        "n": N_CHANNELS,
        "method": "tracemalloc current-traced delta across establishing n channels "
                  "(2 agents), fresh subprocess",
        "traced_establish_s": seconds,
        "keep_alive": alive,
    }


def bench_memory() -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_memprobe"],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                               else f"exit {proc.returncode}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        data.pop("keep_alive", None)
        return data
    except Exception as e:
        log(f"memory probe subprocess failed ({e}); measuring in-process")
        try:
            data = memprobe()
            data.pop("keep_alive", None)
            data["note"] = "measured in-process (subprocess failed)"
            return data
        except Exception as e2:
            return {"error": f"{type(e2).__name__}: {e2}"}


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def fmt(v, spec=",.0f"):
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "nan"
    return format(v, spec)


def print_table(report: dict) -> None:
    r = report["results"]
    print()
    print(f"pymfp {report['pymfp_version']} on Python {report['python']} "
          f"({report['platform']}), median of {report['runs']} run(s)")
    print("-" * 78)
    print(f"{'benchmark':<40}{'msgs/s':>12}{'p50 µs':>12}{'p99 µs':>12}")
    print("-" * 78)

    def row(name, d):
        if not isinstance(d, dict):
            print(f"{name:<40}{'-':>12}")
        elif "error" in d:
            print(f"{name:<40}  ERROR: {d['error']}")
        else:
            print(f"{name:<40}{fmt(d.get('msgs_per_s')):>12}"
                  f"{fmt(d.get('p50_us'), ',.1f'):>12}{fmt(d.get('p99_us'), ',.1f'):>12}")

    for size, d in r.get("blocking_send", {}).items():
        row(f"blocking send {size} B, 1 channel", d)
    row(f"blocking send 64 B, {N_CHANNELS} channels (rr)", r.get("blocking_send_1000_channels_64"))
    for size, d in r.get("async_send", {}).items():
        row(f"async send {size} B, 1 channel", d)
    row("sqlite (encrypted) blocking send 64 B", r.get("sqlite_send_64"))
    print("-" * 78)
    e = r.get("establish", {})
    if "error" in e:
        print(f"establish: ERROR: {e['error']}")
    elif e:
        print(f"establish {e['n']} channels: {e['seconds']:.3f} s "
              f"({e['per_channel_s'] * 1e6:.1f} µs/channel avg, "
              f"{e['marginal_per_channel_s_at_n'] * 1e6:.1f} µs/channel marginal at n={e['n']})")
        if "extrapolated_10000_s" in e:
            print(f"establish 10000 channels: EXTRAPOLATED {e['extrapolated_10000_s']:.1f} s "
                  f"(quadratic fit; naive linear would say {e['extrapolated_10000_linear_s']:.1f} s)")
    mem = r.get("memory", {})
    if "error" in mem:
        print(f"memory per channel: ERROR: {mem['error']}")
    elif mem:
        print(f"memory per channel: {fmt(r.get('bytes_per_channel'))} B (tracemalloc), "
              f"{fmt(mem.get('rss_bytes_per_channel'))} B (RSS delta)")
    if r.get("errors"):
        print("errors:")
        for k, v in r["errors"].items():
            print(f"  {k}: {v}")
    print()


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def _loadavg():
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmark pymfp (Python MFP reference)")
    ap.add_argument("--json", metavar="OUT.json", help="write results as JSON here")
    ap.add_argument("--quick", action="store_true", help="1 run, short time budgets (<~30 s)")
    ap.add_argument("--runs", type=int, help="override the number of runs")
    ap.add_argument("--_memprobe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import logging
    logging.getLogger("mfp").setLevel(logging.WARNING)  # keep pymfp's default quiet level

    if args._memprobe:
        print(json.dumps(memprobe()))
        return 0

    import mfp

    prof = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 3)
    version = getattr(mfp, "__version__", "unknown")
    try:
        from importlib.metadata import version as dist_version
        version = dist_version("pymfp")
    except Exception:
        pass
    if version != "1.0.0":
        log(f"warning: expected pymfp 1.0.0, found {version}")

    load_start = _loadavg()
    if load_start is not None and load_start >= 0.5 * (os.cpu_count() or 1):
        log(f"warning: 1-min load average is {load_start:.2f} on {os.cpu_count()} CPUs; "
            "pymfp hands every delivery to a new thread, so CPU contention inflates "
            "latencies (bimodal ~0.2 ms / ~4 ms sends)")
    t_start = time.perf_counter()
    results: dict = {}
    errors: dict = {}

    def guarded(name, fn, *a):
        log(f"[{time.perf_counter() - t_start:6.1f}s] {name} ...")
        try:
            return fn(*a)
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            log(traceback.format_exc())
            return {"error": errors[name]}

    # memory first: it runs in a fresh subprocess anyway
    mem = guarded("memory", bench_memory)
    results["bytes_per_channel"] = mem.get("tracemalloc_bytes_per_channel")
    results["memory"] = mem

    results["blocking_send"] = {}
    for size in PAYLOAD_SIZES:
        results["blocking_send"][str(size)] = guarded(f"blocking_send {size}", bench_blocking,
                                                      size, runs, prof)

    many = guarded("blocking_send_1000_channels_64 + establish", bench_blocking_many_channels,
                   runs, prof)
    if isinstance(many, tuple):
        results["blocking_send_1000_channels_64"], establish_runs = many
        results["establish"] = guarded("establish summary", summarize_establish, establish_runs)
    else:
        results["blocking_send_1000_channels_64"] = many
        results["establish"] = many

    results["async_send"] = {}
    for size in ASYNC_SIZES:
        results["async_send"][str(size)] = guarded(f"async_send {size}", bench_async, size, runs, prof)

    results["sqlite_send_64"] = guarded("sqlite_send_64", bench_sqlite, runs, prof)
    if errors:
        results["errors"] = errors

    report = {
        "pymfp_version": version,
        "python": platform.python_version(),
        "runs": runs,
        "quick": bool(args.quick),
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "wall_s": None,
        "loadavg_1min_start": load_start,
        "loadavg_1min_end": _loadavg(),
        "config": {
            "max_message_rate": 0,
            "max_channels_per_agent": 1_000_000,
            "max_agents": 1_000_000,
            "max_payload_size": 2 * 1024 * 1024,
            "topology": "2 agents per runtime, all channels between them",
            "time_budget_per_run_s": prof["budget_s"],
        },
        "results": results,
    }
    report["wall_s"] = time.perf_counter() - t_start
    print_table(report)
    print(f"total wall time {report['wall_s']:.1f} s; 1-min load average "
          f"{fmt(report['loadavg_1min_start'], '.2f')} at start, "
          f"{fmt(report['loadavg_1min_end'], '.2f')} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
