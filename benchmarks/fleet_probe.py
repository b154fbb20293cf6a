"""Where a frame's time goes, for benchmarks/bench_fleet.py: in the
benchmark's own process (the plain pipeline) and in each cass_fleet worker
(Ray runs ``install`` at every worker process's start:
``runtime_env={"worker_process_setup_hook": "fleet_probe.install"}``).

``install`` wraps, in that process, without changing what they do:

- decode: ``bag_io.image_to_rgb`` (an image message to an RGB array);
- model: ``Segmenter.segment`` (and ``segment_keeping``);
- write: cass_bag's output writes (``_write_outputs``, ``_write_overlay``:
  messages built, serialised, written) and the output bag's ``close``
  (its last chunk and index);

each as wall seconds and the calling thread's CPU seconds, summed over a
``bag_tool.run``, with the process's user and system CPU seconds, minor
page faults and voluntary context switches, and the
circumstances a worker's frame cost depends on (niceness, torch's and
OpenMP's threads in the thread that runs the model, OMP_NUM_THREADS, the
CPUs it may use). With ``$BENCH_FLEET_PROBE`` set (a folder), every run
writes them there as ``<pid>_<n>.json``; ``last()`` gives them in-process.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

PROBE_DIR = "BENCH_FLEET_PROBE"
_stats: dict[str, list[float]] = {}
_last: dict[str, Any] = {}
_runs = [0]
_lock = threading.Lock()
_active = threading.local()          # the parts being timed in this thread


def _add(name: str, wall: float, cpu: float) -> None:
    with _lock:
        got = _stats.setdefault(name, [0.0, 0.0, 0])
        got[0] += wall
        got[1] += cpu
        got[2] += 1


def _timed(owner: Any, attr: str, name: str) -> None:
    real = getattr(owner, attr)
    if getattr(real, "_fleet_probe", False):
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        active = _active.__dict__.setdefault("names", set())
        if name in active:               # inside another timed call of the same part
            return real(*args, **kwargs)
        active.add(name)
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - t0, time.thread_time() - c0)
            active.discard(name)

    timed._fleet_probe = True  # type: ignore[attr-defined]
    setattr(owner, attr, timed)


def _omp_max_threads() -> int | None:
    """OpenMP's nthreads ICV in the calling thread (what an OpenMP region
    started here uses), from the OpenMP runtime torch loaded."""
    for name in ("libgomp.so.1", "libiomp5.so", "libomp.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        return int(lib.omp_get_max_threads())
    return None


def environment(out: Path | None = None) -> dict[str, Any]:
    """What this process and thread run with."""
    import torch

    env = {"pid": os.getpid(), "nice": os.nice(0), "torch_threads": torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads(),
           "omp_max_threads": _omp_max_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
           "cpus": sorted(os.sched_getaffinity(0)),
           "main_thread": threading.current_thread() is threading.main_thread(),
           "cwd": os.getcwd()}
    try:
        import cv2

        env["cv2_threads"] = cv2.getNumThreads()
    except ImportError:
        pass
    while out is not None and not out.exists() and out != out.parent:
        out = out.parent
    if out is not None:
        env["out_dev"] = os.stat(out).st_dev     # the filesystem written to
    return env


def last() -> dict[str, Any]:
    """The last run's figures in this process."""
    return dict(_last)


def install() -> None:
    from rosbags.rosbag2 import Writer

    from cass_ros.bag import io as bag_io
    from cass_ros.bag import tool
    from cass_ros.core.segmenter import Segmenter

    _timed(bag_io, "image_to_rgb", "decode")
    for method in ("segment", "segment_keeping"):
        if hasattr(Segmenter, method):
            _timed(Segmenter, method, "model")
    _timed(tool, "_write_outputs", "write")
    _timed(tool, "_write_overlay", "write")
    _timed(Writer, "close", "write")
    real = tool.run
    if getattr(real, "_fleet_probe", False):
        return

    def run(opts: Any, segmenter: Any = None) -> Any:
        with _lock:
            _stats.clear()
        times0, t0 = os.times(), time.perf_counter()
        use0 = resource.getrusage(resource.RUSAGE_SELF)
        env = environment(Path(opts.out))
        try:
            return real(opts, segmenter)
        finally:
            times1 = os.times()
            use1 = resource.getrusage(resource.RUSAGE_SELF)
            _runs[0] += 1
            _last.clear()
            _last.update(env=env, wall=time.perf_counter() - t0,
                         user=times1.user - times0.user, sys=times1.system - times0.system,
                         minflt=use1.ru_minflt - use0.ru_minflt,
                         nvcsw=use1.ru_nvcsw - use0.ru_nvcsw,
                         parts={k: list(v) for k, v in _stats.items()})
            folder = os.environ.get(PROBE_DIR)
            if folder:
                path = Path(folder) / f"{os.getpid()}_{_runs[0]}.json"
                path.write_text(json.dumps(_last))

    run._fleet_probe = True  # type: ignore[attr-defined]
    tool.run = run
