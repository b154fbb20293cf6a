"""cass_fleet's run on Ray: cass_bag's pipeline over many bags at once
(docs/ros-interface.md, cass_fleet; README, "cass_fleet").

Ray is imported here only, and inside the functions that use it, so that
``cass_fleet --help``, a bad argument and a refused DIR answer without it.

Design:

- The driver (this process) finds the bags, opens each once to plan it
  (``bag.tool.plan_bag``: the settings and topics checked, the frames
  counted; no model), writes the manifest, and hands out jobs: a bag, or a
  chunk of one (``chunks.frame_ranges``). It never reads frames.
- Workers are Ray actors (``FleetWorker``), each loading the segmenter once
  (``bag.tool.load_segmenter``) and keeping it, its text-embedding cache
  with it, for every job it gets: one per GPU with ``--gpus-per-worker 1``,
  else ``--workers`` of them sharing the CPUs (each gets its share of them
  as Ray resources and as torch threads). A job is ``bag.tool.run`` on an
  already-loaded segmenter: cass_bag's own code writes the output bag. A
  worker runs one call at a time, in its process's main thread, as a plain
  cass_bag does (in one of Ray's threads a frame cost more: see
  ``FleetWorker``); the frames it reads go to a counter actor
  (``FleetProgress``) that the driver reads for the progress bar.
- Reading and decoding run in a thread inside each worker
  (``BagToolOptions.prefetch``), a few frames ahead of the model, rather
  than in separate Ray tasks. Why: a Ray task per bag would need its own CPU
  resource beside the actors' (on a 2-CPU machine with two actors nothing
  would be left to run it, a deadlock unless it asks for none, and then it
  oversubscribes the same cores anyway), every frame would be copied into
  the object store and out again, and a lost reader would fail a bag the
  worker is fine with. The thread costs none of that: decoding (OpenCV,
  rosbags' deserialisation into numpy views) and the model (torch) release
  the GIL, so they overlap as tasks would; the queue between them is
  bounded, so a fast reader never fills the memory. The only Ray resources
  are the actors', so no run waits for a resource it holds.
- Each job writes into ``DIR/.fleet_tmp/``; a bag's output is moved to
  ``DIR/<output>/`` by one rename once it is complete (its chunks joined in
  order, ``chunks.join_bags``), and only then is it marked "done" in the
  manifest; a bag is marked "running" before its first job goes out.
- A failing bag (unreadable, no prompts, a bad frame stream) is recorded
  "failed" with cass_bag's one-line reason and the others go on; it is not
  run again (the same input fails the same way).
- A lost worker (its process or its node died: Ray's ``RayActorError``,
  ``ActorDiedError`` when the node is gone) is replaced by a new actor,
  which gets work only once its model is loaded (``ready``): Ray places it
  where resources are left, and a cluster that lost a node may have none,
  so the run goes on with the workers it has. The job the worker had is
  run again from its start (a chunked bag: that chunk only, its finished
  chunks kept), in a new part folder (``DIR/.fleet_tmp/<bag>/partKKKK.A``,
  A its attempt), the lost one's removed: nothing a dead worker half wrote
  is ever joined or moved into place. A bag whose workers are lost
  ``--max-attempts`` times (a bag that crashes its worker each time) is
  recorded "failed" with the last loss as reason. Ray's own actor restarts
  (``max_restarts``) are not used: the calls sent to a restarting actor
  wait for it, and on a cluster that lost a node it may never find room;
  here only ready workers get work, and the driver has to decide what to
  redo anyway (Ray fails the lost call, it does not say which bag).
- Ctrl-C (KeyboardInterrupt), and SIGTERM made one,
  stops the workers, leaves the running bags "running" (not done: the next
  run does them again) and the manifest "interrupted".
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..bag import io as bag_io
from ..bag import tool as bag_tool
from ..core.config import ConfigError, read_settings_file
from ..core.prompts import PromptError
from ..ros import params as node_params
from . import chunks
from .inputs import BagInput
from .manifest import MAX_ATTEMPTS, TMP_NAME, Manifest, fingerprint
from .signals import sigterm_interrupts

log = logging.getLogger("cass_fleet")

PREFETCH = 8                    # decoded frames a worker reads ahead of its model
POLL_S = 0.5                    # progress and completion polling
READY_TIMEOUT_S = 900.0         # workers that cannot be placed or load no model
_BAG_ERRORS = (bag_io.BagError, ConfigError, PromptError)


@dataclass
class FleetOptions:
    """What ``cass_fleet`` is asked to do (the command line, as data)."""

    inputs: list[BagInput]
    out: Path
    params_file: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # --set
    topics: list[str] = field(default_factory=list)
    storage: str = "mcap"
    color: bool = True
    copy_input: bool = False
    overlays: bool = False          # DIR/<output>/overlays/
    summary: str | None = None      # "json" | "jsonl" | "csv": DIR/<output>/summary.<fmt>
    address: str | None = None      # None: a local Ray instance; "auto" or HOST:PORT
    workers: int | None = None      # None: one per GPU group, or one on CPUs
    gpus_per_worker: float = 0.0
    batch: int = 1
    chunk_frames: int = 0           # 0: never split a bag
    retry_failed: bool = False
    max_attempts: int = MAX_ATTEMPTS  # runs of a bag whose worker is lost
    ray_temp_dir: Path | None = None  # a local Ray's folder (kept); None: a temporary one
    # (frames so far, frames in all, bags ended, bags in all)
    progress: Callable[[int, int, int, int], None] | None = None
    stop_after: int | None = None   # tests: stop as Ctrl-C would after N bags ended


@dataclass
class FleetResult:
    done: int = 0                   # bags done by this run
    failed: int = 0                 # bags failed in this run
    skipped: int = 0                # done (or failed) before, not run again
    frames: int = 0                 # frames segmented by this run
    seconds: float = 0.0
    startup_seconds: float = 0.0    # of ``seconds``: Ray and the workers' models
    interrupted: bool = False
    workers: int = 0


# ---------------------------------------------------------------- settings


def bag_options(fo: FleetOptions) -> bag_tool.BagToolOptions:
    """cass_bag's options for every bag (input and outputs set per job).
    The parameters file is read here, in the driver, and its settings sent
    with the --set ones after them (cass_bag's order): a worker on another
    node, in another working folder, needs no copy of it."""
    settings = dict(fo.settings)
    if fo.params_file is not None:
        settings = {**read_settings_file(fo.params_file), **settings}
    return bag_tool.BagToolOptions(
        input_bag=Path("."), out=Path("."), params_file=None, topics=list(fo.topics),
        settings=settings, storage=fo.storage, color=fo.color,
        copy_input=fo.copy_input, progress=False, batch=fo.batch, prefetch=PREFETCH)


def check_settings(fo: FleetOptions) -> None:
    """The settings as cass_bag checks them, and the fleet's own flags;
    raises ConfigError / PromptError with one line."""
    if fo.batch < 1:
        raise ConfigError(f"--batch must be >= 1, not {fo.batch}")
    if fo.chunk_frames < 0:
        raise ConfigError(f"--chunk-frames must be >= 0, not {fo.chunk_frames}")
    if fo.workers is not None and fo.workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {fo.workers}")
    if fo.max_attempts < 1:
        raise ConfigError(f"--max-attempts must be >= 1, not {fo.max_attempts}")
    if fo.ray_temp_dir is not None and fo.address:
        raise ConfigError("--ray-temp-dir is for the local Ray; a cluster's nodes have their "
                          "own (ray start --temp-dir)")
    if fo.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, not {fo.gpus_per_worker}")
    if fo.storage not in bag_io.STORAGES:
        raise ConfigError(f"unknown storage {fo.storage!r}")
    why = bag_tool.chunking_refused(bag_options(fo))  # reads and checks the settings
    if why and fo.chunk_frames > 0:
        raise ConfigError(f"--chunk-frames: {why}")


def fleet_fingerprint(fo: FleetOptions) -> dict[str, Any]:
    """Everything that defines the outputs (manifest module docstring)."""
    values = {name: spec.default for name, spec in node_params.SPECS.items()}
    if fo.params_file is not None:
        values.update(read_settings_file(fo.params_file))
    values.update(fo.settings)
    outputs = {"topics": list(fo.topics), "storage": fo.storage, "color": fo.color,
               "copy_input": fo.copy_input, "overlays": fo.overlays, "summary": fo.summary}
    return fingerprint(__version__, values, outputs)


# ---------------------------------------------------------------- the worker (a Ray actor)


class FleetWorker:
    """A segmenter kept for many jobs (module docstring). Ray makes it an
    actor (``_worker_class``) that runs one method at a time, in its
    process's main thread: a job run in another thread (Ray's threads of an
    actor with ``max_concurrency`` > 1) cost 10 to 20 % more per frame, its
    freed memory handed back to the system and faulted in again on every
    frame (40 000 page faults a frame with full-size models, against none
    in the main thread, and the system time with them; README, Benchmark).
    Its frames read go to a ``FleetProgress`` counter as they are read."""

    def __init__(self, base: bag_tool.BagToolOptions, threads: int, board: Any = None,
                 key: str = "") -> None:
        logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
        self.base = base
        self.board, self.key = board, key
        self.error = ""
        try:
            import torch

            torch.set_num_threads(max(1, threads))
            self.segmenter = bag_tool.load_segmenter(base)
        except Exception as e:  # noqa: BLE001 - said by ready(), the run stops with it
            self.error = _one_line(e)

    def ready(self) -> dict[str, str]:
        """{"error": "" when the model is loaded, else why not; "node": the
        Ray node id of this worker}."""
        return {"error": self.error, "node": _node_id()}

    def _tick(self) -> None:
        if self.board is not None:   # not waited for: the progress only
            self.board.tick.remote(self.key)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """One bag or chunk: {"ok": True, "node": ..., "report": ...} or {"ok": False, "reason": ...}."""
        opts = replace(self.base, input_bag=Path(job["input"]), out=Path(job["out"]),
                       overlays=Path(job["overlays"]) if job["overlays"] else None,
                       summary=Path(job["summary"]) if job["summary"] else None,
                       frame_range=job["range"], on_frame=self._tick)
        try:
            report = bag_tool.run(opts, self.segmenter)
        except _BAG_ERRORS as e:
            return {"ok": False, "reason": _one_line(e)}
        except Exception as e:  # noqa: BLE001 - one bag's failure, recorded; the run goes on
            return {"ok": False, "reason": f"{type(e).__name__}: {_one_line(e)}"}
        return {"ok": True, "node": _node_id(), "report": {
            "frames_in": report.frames_in, "frames_out": report.frames_out,
            "frames_bad": report.frames_bad, "frames_without_prompts": report.frames_without_prompts,
            "prompts_accepted": report.prompts_accepted,
            "prompts_rejected": report.prompts_rejected, "prompt_ids": report.prompt_ids,
            "seconds": report.seconds}}


class FleetProgress:
    """The frames read by each worker, as they tell it (``tick``, one call a
    frame, not waited for); the driver reads the sum for its progress bar.
    A worker lost keeps its count: the bar counts frames read, not kept."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}

    def tick(self, key: str) -> None:
        self.frames[key] = self.frames.get(key, 0) + 1

    def total(self) -> int:
        return sum(self.frames.values())


def _node_id() -> str:
    """The Ray node this process runs on (hex id, as ``ray status`` and
    ``ray.nodes()`` name it)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _loss_reason(e: BaseException) -> str:
    """One line for a lost worker: Ray's first line, and its line saying
    why the actor died where it gives one (its node died, its process
    exited), which follows the actor's tab-indented particulars."""
    lines = str(e).splitlines()
    why = next((ln.strip() for ln in lines[1:] if ln.strip() and not ln.startswith("\t")), "")
    why = why.split(" Some common causes")[0]      # Ray's list of guesses
    text = " ".join(x for x in (_one_line(e), why) if x)
    return f"worker lost: {text[:300]}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _worker_class() -> Any:
    import ray

    return ray.remote(FleetWorker)


def _progress_board() -> Any:
    """The progress counter, on the driver's node (it lives as long as the
    driver's raylet does; no CPU of its own)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(FleetProgress).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()


# ---------------------------------------------------------------- the driver


@dataclass
class _Bag:
    """A bag of this run: its plan, its chunks and what came back."""

    bag: BagInput
    tmp: Path
    plan: bag_tool.BagPlan
    ranges: list[tuple[int, int | None]]
    results: list[dict[str, Any] | None] = field(default_factory=list)
    dirs: list[Path | None] = field(default_factory=list)   # each chunk's finished part
    nodes: list[str] = field(default_factory=list)          # each chunk's latest node
    failed: str = ""
    started: bool = False
    attempts: int = 1               # 1 + its jobs whose worker was lost
    lost: list[dict[str, Any]] = field(default_factory=list)

    def part(self, k: int, attempt: int) -> Path:
        return self.tmp / f"part{k:04d}.{attempt}"


@dataclass
class _Job:
    bag: _Bag
    k: int                          # chunk index
    attempt: int = 1                # the bag's attempt it belongs to
    node: str = ""                  # where it runs (a Ray node id)

    @property
    def dir(self) -> Path:
        """Its own part folder: a redone job never writes where a lost one did."""
        return self.bag.part(self.k, self.attempt)


def connect(address: str | None, temp_dir: Path | None = None) -> bool:
    """Ray: an instance already there (tests: False, nothing done), the
    cluster at ``address``, or a new local one keeping its session folders
    in ``temp_dir``. True when this call started (or began to start) it:
    ``ray.shutdown()`` is then the caller's, even when a Ctrl-C or SIGTERM
    stopped ``ray.init`` halfway (its local processes may be up).

    SIGTERM during ``ray.init`` is a KeyboardInterrupt as everywhere else
    in the run (``sigterm_interrupts``): ``ray.init`` sets its own handler
    first thing (``sys.exit(15)``), which is caught here and put back to
    ours once it returns."""
    import ray

    if ray.is_initialized():
        return False
    # The workers' logs would break the progress bar: their failures come
    # back as results, and the manifest records them.
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if address:
        kwargs.update(address=address)
    else:
        kwargs.update(address="local", _system_config=local_system_config())
        if temp_dir is not None:
            kwargs.update(_temp_dir=str(temp_dir.absolute()))
    try:
        ray.init(**kwargs)
    except SystemExit as e:           # Ray's SIGTERM handler, before ours was back
        if e.code == signal.SIGTERM:
            raise KeyboardInterrupt from None
        raise
    except (ConnectionError, RuntimeError) as e:
        if not address:
            raise
        raise ConfigError(_connect_error(address, e)) from None
    finally:
        sigterm_interrupts()
    return True


def _connect_error(address: str, e: BaseException) -> str:
    """One line for a cluster that cannot be joined, with the token hint
    where Ray says the token is missing (a cluster started with token
    authentication, Ray's default for ``ray start --head`` since 2.59)."""
    text = f"{e} {e.__cause__ or ''}"
    line = f"cannot connect to the Ray cluster at {address}: {_one_line(e)}"
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        line += ("; it wants its token: RAY_AUTH_MODE=token and the head's ~/.ray/auth_token "
                 "(or RAY_AUTH_TOKEN) here (README, cass_fleet, cluster)")
    return line


def local_system_config() -> dict[str, Any]:
    """Ray's settings for the local Ray a run starts: its workers at this
    process's niceness. Ray's default (``worker_niceness`` 15) makes a
    worker yield the CPUs to any other process that wants them (Ray's own,
    the driver, whatever else runs on the machine), which a worker that is
    the run's whole point should not (README, Benchmark: what it costs). A
    cluster's nodes take it from ``RAY_worker_niceness`` where ``ray start``
    runs."""
    return {"worker_niceness": max(0, os.nice(0))}


def _own_temp_dir() -> Path:
    """A new folder for a local Ray's sessions, so that none is left in
    /tmp/ray after the run (README, cass_fleet). Ray's sockets live in it
    and a Unix socket path has at most 107 bytes: a long TMPDIR is passed by."""
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="cass_fleet_ray_", dir=base if len(base) <= 32 else "/tmp"))


def _placement(fo: FleetOptions) -> tuple[int, float, float, int]:
    """(workers, CPUs each, GPUs each, torch threads each) on this cluster."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    node_cpus = max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]),
                    default=cpus)
    g = fo.gpus_per_worker
    if g > 0:
        if gpus < g:
            raise ConfigError(f"--gpus-per-worker {g:g}: the Ray cluster has {gpus:g} GPU(s)")
        n = fo.workers or max(1, int(gpus // g))
        return n, 1.0, g, 1
    n = fo.workers or 1
    if n > cpus:
        raise ConfigError(f"--workers {n}: the Ray cluster has {cpus:g} CPU(s), one per worker "
                          "at least")
    each = min(node_cpus, cpus / n)
    each = float(int(each)) if each >= 1 else each
    return n, each, 0.0, max(1, int(each))


class _Pool:
    """The workers; a lost one is replaced, and gets work once it is ready."""

    def __init__(self, fo: FleetOptions, base: bag_tool.BagToolOptions) -> None:
        self.n, self.cpus, self.gpus, self.threads = _placement(fo)
        self.base = base
        self.cls = _worker_class().options(num_cpus=self.cpus, num_gpus=self.gpus,
                                           max_concurrency=1, max_restarts=0)
        self.board = _progress_board()
        self.made = 0                          # workers started (their progress keys)
        self.actors = [self._new() for _ in range(self.n)]
        self.node: list[str] = [""] * self.n   # "": not ready (starting, or given up)
        self.starting: dict[Any, int] = {}     # a replacement's ready() ref -> its slot
        self.read = 0                          # frames read, as last known
        self.flying: dict[Any, Any] = {}  # their jobs' result refs (the driver's)

    def _new(self) -> Any:
        self.made += 1
        return self.cls.remote(self.base, self.threads, self.board, str(self.made))

    def wait_ready(self) -> None:
        import ray

        got = ray.get([a.ready.remote() for a in self.actors], timeout=READY_TIMEOUT_S)
        bad = [g["error"] for g in got if g["error"]]
        if bad:
            raise ConfigError(f"the workers cannot load the model: {bad[0]}")
        self.node = [g["node"] for g in got]

    def lost(self, i: int) -> None:
        """Worker ``i`` died: a new one started in its slot."""
        import ray

        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._new()
        self.node[i] = ""
        self.starting[self.actors[i].ready.remote()] = i

    def started(self, timeout: float) -> list[int]:
        """The slots of replacements whose model is loaded now (waiting up to
        ``timeout`` s for one); one that cannot load it is given up."""
        import ray
        from ray.exceptions import RayError

        if not self.starting:
            return []
        ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=timeout)
        out = []
        for ref in ready:
            i = self.starting.pop(ref)
            try:
                got = ray.get(ref)
            except RayError as e:
                got = {"error": _one_line(e), "node": ""}
            if got["error"]:
                log.warning("a new worker could not start; the run goes on without it: %s",
                            got["error"])
                with contextlib.suppress(Exception):
                    ray.kill(self.actors[i], no_restart=True)
                continue
            self.node[i] = got["node"]
            out.append(i)
        return out

    def frames(self) -> int:
        """The frames the workers have read (the last known count when the
        counter does not answer at once)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        with contextlib.suppress(GetTimeoutError, RayError):
            self.read = ray.get(self.board.total.remote(), timeout=5)
        return self.read

    def close(self) -> None:
        import ray

        for a in [*self.actors, self.board]:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(a, no_restart=True)
        # ray.kill returns at once: wait for the jobs to end (with an error),
        # so that no killed job still writes when DIR/.fleet_tmp is removed
        if self.flying:
            with contextlib.suppress(Exception):
                ray.wait(list(self.flying), num_returns=len(self.flying), timeout=30)


def run_fleet(fo: FleetOptions, manifest: Manifest) -> FleetResult:
    """Run the bags of ``fo`` the manifest does not hold as done (its
    resume rules), recording each as it ends. KeyboardInterrupt (Ctrl-C,
    SIGTERM: ``sigterm_interrupts``, from the start, planning and
    ``ray.init`` included; or ``stop_after``) ends the run early: the
    result says ``interrupted``, the manifest too."""
    result = FleetResult()
    base = bag_options(fo)
    tmp_root = fo.out / TMP_NAME
    started = time.perf_counter()
    restore = sigterm_interrupts()
    started_ray, ray_tmp, pool = False, None, None
    try:
        shutil.rmtree(tmp_root, ignore_errors=True)  # a killed run's partial outputs
        todo = manifest.todo(fo.inputs, fo.retry_failed)
        result.skipped = len(fo.inputs) - len(todo)
        manifest.save()
        bags = _plan(fo, base, manifest, todo, tmp_root, result)
        total = sum(b.plan.frames for b in bags)
        if fo.progress:
            fo.progress(0, total, 0, len(bags))
        if not bags:
            return result
        import ray

        if not ray.is_initialized():  # (tests start their own)
            if not fo.address and fo.ray_temp_dir is None:
                ray_tmp = _own_temp_dir()
            started_ray = True         # shut down even when stopped halfway
            connect(fo.address, fo.ray_temp_dir or ray_tmp)
        pool = _Pool(fo, base)
        result.workers = pool.n
        pool.wait_ready()
        result.startup_seconds = time.perf_counter() - started
        _drive(fo, manifest, pool, bags, total, result)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if pool is not None:
            pool.close()
        if started_ray:
            import ray

            ray.shutdown()
        if ray_tmp is not None:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        _remove_tmp(tmp_root, settle=result.interrupted and pool is not None)
        result.seconds = time.perf_counter() - started
        manifest.finish("interrupted" if result.interrupted else "finished")
        restore()
    return result


def _remove_tmp(tmp_root: Path, settle: bool) -> None:
    """DIR/.fleet_tmp removed. A killed worker's process may write for a
    moment after Ray reports it dead: removed again until it stays gone
    (whatever a straggler still leaves, the next run removes first)."""
    for _ in range(10 if settle else 1):
        shutil.rmtree(tmp_root, ignore_errors=True)
        if not settle:
            return
        time.sleep(0.3)
        if not tmp_root.exists():
            return


def _plan(fo: FleetOptions, base: bag_tool.BagToolOptions, manifest: Manifest,
          todo: list[BagInput], tmp_root: Path, result: FleetResult) -> list[_Bag]:
    """Each bag opened once: its frames and topics, or why it fails."""
    bags = []
    for i, bag in enumerate(todo):
        tmp = tmp_root / f"{i:06d}"
        try:
            plan = bag_tool.plan_bag(replace(base, input_bag=bag.path, out=tmp / "plan"))
        except _BAG_ERRORS as e:
            manifest.set_status(bag, "failed", reason=_one_line(e), **_empty_fields())
            result.failed += 1
            continue
        ranges = chunks.frame_ranges(plan.frames, fo.chunk_frames)
        truncated = bool(plan.cut_short)
        manifest.entry(bag).update(
            status="pending", truncated=truncated,
            recovered_messages=plan.message_count if truncated else None,
            recovered_frames=plan.frames if truncated else None,
            topics=[{"topic": t, "camera": c, "type": plan.msgtypes[t]}
                    for t, c in plan.cameras.items()], chunks=len(ranges),
            attempts=0, nodes=[], lost=[])
        manifest.entry(bag).pop("reason", None)
        n = len(ranges)
        bags.append(_Bag(bag, tmp, plan, ranges, [None] * n, [None] * n, [""] * n))
    manifest.save()
    return bags


def _empty_fields() -> dict[str, Any]:
    return {"truncated": False, "recovered_messages": None, "recovered_frames": None,
            "frames": 0, "frames_in": 0, "seconds": 0.0, "frames_per_second": None,
            "topics": [], "prompt_ids": [], "chunks": 0, "attempts": 0, "nodes": [], "lost": []}


def _job_spec(fo: FleetOptions, job: _Job) -> dict[str, Any]:
    """What a worker runs. Absolute paths: a worker's working folder is its
    node's (on a cluster, wherever ``ray start`` ran), not the driver's."""
    part = job.dir.absolute()
    return {"input": str(job.bag.bag.path), "out": str(part / "bag"),
            "overlays": str(part / "overlays") if fo.overlays else None,
            "summary": str(part / f"summary.{fo.summary}") if fo.summary else None,
            "range": None if len(job.bag.ranges) == 1 else job.bag.ranges[job.k]}


def _nodes(b: _Bag) -> list[str]:
    """The nodes its chunks ran (or run) on, each once, in chunk order."""
    return list(dict.fromkeys(n for n in b.nodes if n))


def _dispatch(fo: FleetOptions, manifest: Manifest, pool: _Pool, i: int, job: _Job) -> None:
    """``job`` to worker ``i``; the manifest says the bag runs, where, which attempt."""
    b = job.bag
    job.node = b.nodes[job.k] = pool.node[i]
    b.started = True
    manifest.set_status(b.bag, "running", attempts=b.attempts, nodes=_nodes(b))
    pool.flying[pool.actors[i].run.remote(_job_spec(fo, job))] = (i, job)


def _drive(fo: FleetOptions, manifest: Manifest, pool: _Pool, bags: list[_Bag], total: int,
           result: FleetResult) -> None:
    """Hand out jobs as workers come free; record each bag as it ends; a
    job whose worker was lost goes back in the queue (``_lost``)."""
    import ray
    from ray.exceptions import RayActorError, RayError

    queue = [_Job(b, k) for b in bags for k in range(len(b.ranges))]
    queue.reverse()                              # pop() from the end: bag order
    flying: dict[Any, tuple[int, _Job]] = pool.flying  # ref -> (worker, job)
    idle = list(range(pool.n))
    ended = 0
    came: list[tuple[_Job, dict[str, Any]]] = []
    shown = waiting = time.monotonic()
    while queue or flying or came:
        idle += pool.started(0)
        # New work goes out before the results are recorded (joining,
        # renaming, the manifest): a worker never waits for the driver.
        while queue and idle:
            i, job = idle.pop(0), queue.pop()
            if job.bag.failed:
                idle.insert(0, i)
                continue
            _dispatch(fo, manifest, pool, i, job)
        for job, got in came:
            if _record(fo, manifest, job, got, result, queue):
                ended += 1
        came = []
        if fo.stop_after is not None and ended >= fo.stop_after and (queue or flying):
            raise KeyboardInterrupt  # the test hook: as Ctrl-C at this point
        if not flying:
            if queue and not idle:   # every worker lost: wait for a replacement
                idle += pool.started(POLL_S)
                if not idle and (not pool.starting
                                 or time.monotonic() - waiting > READY_TIMEOUT_S):
                    ended += _no_workers_left(manifest, queue, result)
            continue
        waiting = time.monotonic()
        ready, _ = ray.wait(list(flying), num_returns=1, timeout=POLL_S)
        for ref in ready:
            i, job = flying.pop(ref)
            try:
                got = ray.get(ref)
            except RayActorError as e:   # its process or its node died
                pool.lost(i)              # slot i gets work again once replaced
                came.append((job, {"ok": False, "lost": True, "reason": _loss_reason(e)}))
                continue
            except RayError as e:
                got = {"ok": False, "reason": f"{type(e).__name__}: {_one_line(e)}"}
            idle.append(i)
            came.append((job, got))
        if fo.progress and time.monotonic() - shown >= POLL_S:
            fo.progress(pool.frames(), total, ended, len(bags))
            shown = time.monotonic()
    if fo.progress:
        fo.progress(pool.frames(), total, ended, len(bags))


def _no_workers_left(manifest: Manifest, queue: list[_Job], result: FleetResult) -> int:
    """No worker alive and none coming: the bags left fail (the next run,
    or --retry-failed, does them). Returns the bags ended."""
    ended = 0
    reason = "no worker left: every one was lost and none could be started again"
    log.warning("%s; %d job(s) not run", reason, len(queue))
    for job in reversed(queue):
        if not job.bag.failed:
            _fail(manifest, job.bag, reason, result)
            ended += 1
    queue.clear()
    return ended


def _record(fo: FleetOptions, manifest: Manifest, job: _Job, got: dict[str, Any],
            result: FleetResult, queue: list[_Job]) -> bool:
    """A job's result; True when its bag has ended (done or failed)."""
    b = job.bag
    if b.failed:
        shutil.rmtree(job.dir, ignore_errors=True)
        return False                  # already recorded
    if got.get("lost"):
        return _lost(fo, manifest, job, got["reason"], result, queue)
    if not got["ok"]:
        return _fail(manifest, b, got["reason"], result)
    b.results[job.k] = got["report"]
    b.dirs[job.k] = job.dir
    b.nodes[job.k] = got["node"]
    if any(r is None for r in b.results):
        return False
    if not any(r["frames_out"] for r in b.results if r is not None):
        return _fail(manifest, b, _nothing_segmented(b.results), result)
    with _uninterrupted():     # the output in place and "done" in the manifest: both or neither
        try:
            _finish_bag(fo, b)
        except (OSError, bag_io.BagError) as e:
            b.failed = f"cannot write the output: {_one_line(e)}"
            manifest.set_status(b.bag, "failed", reason=b.failed)
            result.failed += 1
            return True
        result.frames += _done(manifest, b)
        result.done += 1
    return True


def _done(manifest: Manifest, b: _Bag) -> int:
    """The bag recorded "done" with its chunks' reports summed; its frames."""
    reports = [r for r in b.results if r is not None]
    frames = sum(r["frames_out"] for r in reports)
    seconds = sum(r["seconds"] for r in reports)
    counts = {k: sum(r[k] for r in reports) for k in
              ("frames_bad", "frames_without_prompts", "prompts_accepted", "prompts_rejected")}
    manifest.set_status(
        b.bag, "done", frames=frames, frames_in=sum(r["frames_in"] for r in reports),
        seconds=round(seconds, 3), frames_per_second=round(frames / seconds, 3) if seconds else None,
        prompt_ids=sorted({i for r in reports for i in r["prompt_ids"]}), counts=counts,
        attempts=b.attempts, nodes=_nodes(b))
    return frames


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while the block runs, then raised as
    KeyboardInterrupt: a stop between a bag's rename into place and its
    "done" would leave an output the manifest calls "running". In a thread
    other than the main one nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        raise KeyboardInterrupt


def _lost(fo: FleetOptions, manifest: Manifest, job: _Job, reason: str, result: FleetResult,
          queue: list[_Job]) -> bool:
    """A job whose worker died: what it half wrote removed, the job run
    again from its start (next, on the first worker free), unless its bag
    has had ``--max-attempts`` attempts: then it fails. True when it ended."""
    b = job.bag
    shutil.rmtree(job.dir, ignore_errors=True)
    b.lost.append({"node": job.node, "chunk": job.k, "reason": reason})
    if b.attempts >= fo.max_attempts:
        return _fail(manifest, b, f"{reason} (worker lost on each of its {b.attempts} "
                     "attempt(s), --max-attempts)", result)
    b.attempts += 1
    log.warning("%s: %s; running it again (attempt %d of at most %d)", b.bag.output, reason,
                b.attempts, fo.max_attempts)
    queue.append(_Job(b, job.k, b.attempts))
    manifest.set_status(b.bag, "running", attempts=b.attempts, lost=b.lost)
    return False


def _nothing_segmented(results: list[dict[str, Any] | None]) -> str:
    """cass_bag's one line for a bag of which no frame was segmented."""
    reports = [r for r in results if r is not None]
    return bag_tool.nothing_segmented(*(sum(r[k] for r in reports) for k in
                                        ("frames_in", "frames_bad", "frames_without_prompts")))


def _fail(manifest: Manifest, b: _Bag, reason: str, result: FleetResult) -> bool:
    """A bag that ran but failed as a whole: recorded "failed", its parts removed."""
    b.failed = reason
    manifest.set_status(b.bag, "failed", reason=reason, frames=0, seconds=0.0,
                        frames_per_second=None, prompt_ids=[], attempts=b.attempts,
                        nodes=_nodes(b), lost=b.lost)
    shutil.rmtree(b.tmp, ignore_errors=True)
    result.failed += 1
    return True


def _finish_bag(fo: FleetOptions, b: _Bag) -> None:
    """The finished parts as one output folder, renamed into DIR/<output>/."""
    parts = [d for d in b.dirs if d is not None]
    final = b.tmp / "out"
    if len(parts) == 1:
        os.replace(parts[0] / "bag", final)
    else:
        chunks.join_bags([p / "bag" for p in parts], final, fo.storage)
    if fo.overlays:
        chunks.merge_folders([p / "overlays" for p in parts], final / "overlays")
    if fo.summary:
        name = f"summary.{fo.summary}"
        if len(parts) == 1:
            os.replace(parts[0] / name, final / name)
        else:
            chunks.join_summaries([p / name for p in parts], final / name)
    dest = fo.out / b.bag.output
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)           # a stale output (the manifest said not done)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(final, dest)
    shutil.rmtree(b.tmp, ignore_errors=True)
