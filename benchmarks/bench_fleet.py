#!/usr/bin/env python3
"""cass_fleet against cass_bag on the same bags, on this machine
(docs/ros-interface.md, cass_fleet; README, "cass_fleet").

N sample bags (tools/make_sample_bag.py, F frames each) are segmented by:

- cass_bag, one bag after the other, as a shell loop would run it (the
  model loaded per bag);
- cass_bag's pipeline with the model loaded once (bag.tool.run given the
  segmenter): the per-frame cost cass_fleet's workers pay, the reference
  for the overhead;
- cass_fleet with 1 and 2 workers (--workers) on a local Ray of this
  machine's CPUs (GPUs: --gpus-per-worker, see benchmarks/gpu_check.py).

Per run: wall seconds, the start-up part of it (Ray, the workers' models),
frames/s after the start-up, and cass_fleet's overhead per frame against
the pipeline with one model (the goal: under 5 % with one worker). Times
only: the outputs are the tests' business (test/fleet/).

    .venv/bin/python benchmarks/bench_fleet.py [--tiny | --full] [--bags 3] [--frames 6]
        [--workers 1 2] [--device cpu] [--gpus-per-worker G] [--batch N]

On a GPU machine (the figures benchmarks/gpu_check.py should take):
``--full --device auto --gpus-per-worker 1 --workers 1`` and ``0.5 --workers 2``
(actors per GPU), each with ``--batch 1`` and ``--batch 8``.

--tiny (the default): tiny random models, a quick run whose frame cost is
small, so the orchestration's share shows. --full: full-size random
models (CLIP ViT-B/16, DINO ViT-B/8; no download), a real frame cost; a
few frames are enough.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This tree's cass_ros, before an installed copy (install/, on PYTHONPATH once
# install/setup.bash is sourced), here and in the Ray workers (main): driver
# and workers must run the same code (a stale install/ would not understand
# the workers' answers).
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "benchmarks"))

import fleet_probe  # noqa: E402
import yaml  # noqa: E402

from cass_ros.bag import tool as bag_tool  # noqa: E402
from cass_ros.fleet import inputs as fleet_inputs  # noqa: E402
from cass_ros.fleet import runner  # noqa: E402
from cass_ros.fleet.manifest import Manifest  # noqa: E402


def make_inputs(base: Path, bags: int, frames: int, full: bool, device: str) -> Path:
    """The bags and a parameters file; returns the parameters file."""
    import make_sample_bag

    for i in range(bags):
        make_sample_bag.write_sample_bag(base / "bags" / f"bag{i}", frames=frames)
    if full:
        clip = dino = "random"
        short_side = 336
    else:
        from cass_ros.core.models import save_tiny_random_checkpoints

        clip, dino = save_tiny_random_checkpoints(base / "weights", seed=0)
        short_side = 224
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump({
        "clip_weights": clip, "dino_weights": dino, "device": device, "short_side": short_side,
        "prompts": list(make_sample_bag.INITIAL_PROMPTS), "background_classes": [],
        "prob_threshold": 0.0}))
    return params


def bench_cass_bag(bags: list[Path], params: Path, out: Path, once: bool, batch: int = 1
                   ) -> dict:
    """cass_bag over the bags in turn; ``once``: one model for all."""
    started = time.perf_counter()
    segmenter = None
    startup = 0.0
    if once:
        segmenter = bag_tool.load_segmenter(bag_tool.BagToolOptions(
            input_bag=bags[0], out=out, params_file=params))
        startup = time.perf_counter() - started
    frames = 0
    probes = []
    for i, bag in enumerate(bags):
        report = bag_tool.run(bag_tool.BagToolOptions(
            input_bag=bag, out=out / f"{i}", params_file=params, progress=False, batch=batch),
            segmenter)
        frames += report.frames_out
        probes.append(fleet_probe.last())
    return {"wall": time.perf_counter() - started, "startup": startup, "frames": frames,
            "probes": probes}


def bench_fleet(bag_root: Path, params: Path, out: Path, workers: int, gpus: float = 0.0,
                batch: int = 1) -> dict:
    fo = runner.FleetOptions(inputs=fleet_inputs.collect([str(bag_root)], out=out), out=out,
                             params_file=params, workers=workers, gpus_per_worker=gpus,
                             batch=batch)
    runner.check_settings(fo)
    manifest = Manifest.open(out, runner.fleet_fingerprint(fo))
    probe_dir = Path(os.environ[fleet_probe.PROBE_DIR])
    before = set(probe_dir.iterdir())
    result = runner.run_fleet(fo, manifest)
    if result.failed or result.interrupted:
        raise SystemExit(f"bench_fleet: the fleet run failed: {manifest.counts()}")
    probes = [json.loads(f.read_text()) for f in sorted(set(probe_dir.iterdir()) - before)]
    return {"wall": result.seconds, "startup": result.startup_seconds, "frames": result.frames,
            "probes": probes}


def components(name: str, r: dict) -> str:
    """A row of the second table: per frame, where the time went (summed
    over the bags, and over the workers: CPU seconds, not wall), and what
    the processes that ran the model ran with."""
    probes, n = r["probes"], max(1, r["frames"])
    part = {k: sum(p["parts"].get(k, [0.0, 0.0])[0] for p in probes) * 1000 / n
            for k in ("decode", "model", "write")}
    cpu = {k: sum(p["parts"].get(k, [0.0, 0.0])[1] for p in probes) * 1000 / n
           for k in ("decode", "model", "write")}
    user = sum(p["user"] for p in probes) * 1000 / n
    system = sum(p["sys"] for p in probes) * 1000 / n
    faults = sum(p.get("minflt", 0) for p in probes) / n
    envs = {(p["env"]["nice"], p["env"]["torch_threads"], p["env"]["omp_max_threads"],
             p["env"]["OMP_NUM_THREADS"]) for p in probes}
    env = "; ".join(f"nice {a}, torch {b}, omp {c}, OMP_NUM_THREADS {d}" for a, b, c, d in
                    sorted(envs, key=str))
    return (f"| {name} | {part['decode']:.0f} ({cpu['decode']:.0f}) | {part['model']:.0f} "
            f"({cpu['model']:.0f}) | {part['write']:.1f} ({cpu['write']:.1f}) | {user:.0f} "
            f"| {system:.1f} | {faults:.0f} | {env} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="tiny random models (default)")
    size.add_argument("--full", action="store_true", help="full-size random models")
    p.add_argument("--bags", type=int, default=3)
    p.add_argument("--frames", type=int, default=None,
                   help="frames per bag (default 6 tiny, 3 full)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", help="cpu, or auto / cuda with --gpus-per-worker")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPU workers (the GPU figures: actors per GPU = 1 / this)")
    p.add_argument("--batch", type=int, default=1, help="frames per model call, every run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cass_bag").setLevel(logging.ERROR)
    frames = args.frames or (3 if args.full else 6)
    import ray

    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as tmp:
        base = Path(tmp)
        params = make_inputs(base, args.bags, frames, args.full, args.device)
        bags = sorted((base / "bags").iterdir())
        # The fleet first, then the reference: each worker is a fresh process,
        # and so is this one for its first model (no warm-up favours either).
        fleet_rows = []
        # the workers import this tree's cass_ros too, wherever this runs from
        path = os.pathsep.join(filter(None, [str(REPO), str(REPO / "benchmarks"),
                                             os.environ.get("PYTHONPATH")]))
        probe_dir = base / "probes"
        probe_dir.mkdir()
        os.environ[fleet_probe.PROBE_DIR] = str(probe_dir)
        fleet_probe.install()            # here: the plain pipeline's runs
        # cass_fleet's own local Ray settings (the workers' niceness)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR",
                 _system_config=runner.local_system_config(),
                 runtime_env={"env_vars": {"PYTHONPATH": path, fleet_probe.PROBE_DIR:
                                           str(probe_dir)},
                              "worker_process_setup_hook": "fleet_probe.install"})
        try:
            for n in args.workers:
                fleet_rows.append((f"cass_fleet --workers {n}", str(n), bench_fleet(
                    base / "bags", params, base / f"out_fleet{n}", n, args.gpus_per_worker,
                    args.batch)))
        finally:
            ray.shutdown()
        once = bench_cass_bag(bags, params, base / "out_once", once=True, batch=args.batch)
        rows = [("cass_bag (model per bag)", "-",
                 bench_cass_bag(bags, params, base / "out_bag", once=False, batch=args.batch)),
                ("cass_bag pipeline (model once)", "-", once), *fleet_rows]
    ref = rows[1][2]
    ref_per_frame = (ref["wall"] - ref["startup"]) / ref["frames"]
    models = "full-size random" if args.full else "tiny random"
    gpus = f", {args.gpus_per_worker:g} GPU per worker" if args.gpus_per_worker else ""
    print(f"{args.bags} bags x {frames} frames, {models} models, {args.device}{gpus}, "
          f"--batch {args.batch}, {os.cpu_count()} CPUs\n")
    print("| run | workers | frames | wall s | start-up s | frames/s after start-up "
          "| overhead/frame vs one model |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for name, workers, r in rows:
        steady = r["wall"] - r["startup"]
        fps = r["frames"] / steady if steady > 0 else float("nan")
        overhead = 100.0 * (steady / r["frames"] / ref_per_frame - 1.0)
        print(f"| {name} | {workers} | {r['frames']} | {r['wall']:.2f} | {r['startup']:.2f} "
              f"| {fps:.2f} | {overhead:+.1f} % |")
        summary[name] = (fps, overhead)
    print("\nPer frame, ms (wall, then the calling thread's CPU in brackets): decode "
          "(image_to_rgb), model (Segmenter.segment), write (cass_bag's output messages and "
          "the bag's close); the process's user and system CPU, its minor page faults "
          "(a count); what the model ran with.\n")
    print("| run | decode | model | write | user | sys | page faults | nice, threads in the "
          "model's thread |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, r in rows[1:]:
        print(components(name, r))
    fleet1 = summary.get("cass_fleet --workers 1", (float("nan"),) * 2)
    fleet2 = summary.get("cass_fleet --workers 2", (float("nan"),) * 2)
    print(f"\nbench_fleet: cass_bag_fps={summary['cass_bag pipeline (model once)'][0]:.2f} "
          f"fleet1_fps={fleet1[0]:.2f} fleet2_fps={fleet2[0]:.2f} "
          f"overhead1_pct={fleet1[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
