"""``cass_fleet``: cass_bag over a fleet's bags on Ray (cass_ros.fleet;
docs/ros-interface.md, cass_fleet; README, "cass_fleet").

    cass_fleet INPUT... --out DIR [--params-file YAML] [--set KEY=VALUE ...]
               [--address auto|HOST:PORT] [--workers N] [--gpus-per-worker G]
               [--batch N] [--chunk-frames N] [--report] [--retry-failed]
               [--max-attempts N] [--ray-temp-dir DIR]

Exit codes: 0 every bag done; 1 some failed (the manifest, DIR/fleet.json,
says why); 2 bad arguments, settings, inputs or a DIR of other settings (one
line on stderr, ``cass_fleet: error: ...``); 130 interrupted, by Ctrl-C or
SIGTERM (the manifest lets the next run resume).

Ray (cass_ros.fleet.runner) is imported only once the arguments, the
settings and DIR have been checked, so all of those answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..bag import io as bag_io
from ..core.config import ConfigError
from ..core.prompts import PromptError
from ..fleet import inputs as fleet_inputs
from ..fleet.manifest import MANIFEST_NAME, MAX_ATTEMPTS, Manifest, ManifestError
from ..fleet.signals import sigterm_interrupts
from .bag import parse_set

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SUMMARY_FORMATS = ("json", "jsonl", "csv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cass_fleet", description="Run cass_bag over many bags on Ray (a local instance, "
        "or a cluster with --address): one output bag per input bag under DIR, a resumable "
        "manifest DIR/fleet.json, optionally DIR/report.html.",
        epilog="Example: cass_fleet /data/fleet/ @more_bags.txt --out segmented/ "
               "--params-file config/cass.yaml --gpus-per-worker 1 --report")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a bag (folder, .mcap or .db3), a folder searched for bags, or "
                   "@list.txt (one INPUT a line)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: DIR/<bag path relative to the bags' common folder>/ "
                   "per bag, and DIR/fleet.json")
    p.add_argument("--params-file", type=Path, help="the node's parameters file "
                   "(config/cass.yaml format) or a flat YAML of settings")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (e.g. --set device=cpu --set 'prompts=[car, tree]')")
    p.add_argument("--topics", nargs="+", default=[], metavar="T",
                   help="image topics to segment in every bag (default as cass_bag)")
    p.add_argument("--address", metavar="auto|HOST:PORT",
                   help="an existing Ray cluster (ray start --head ...); default: a local Ray "
                   "instance on this machine")
    p.add_argument("--workers", type=int, metavar="N",
                   help="model workers (default: one per --gpus-per-worker GPUs, else 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per worker (e.g. 1, or 0.5 for two workers per GPU); default 0: "
                   "CPU workers sharing the CPUs")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="frames per model call, as cass_bag --batch (default 1)")
    p.add_argument("--chunk-frames", type=int, default=0, metavar="N",
                   help="split bags of more than N frames into chunks run in parallel and "
                   "joined in order (refused with temporal smoothing, hysteresis or "
                   "instances); default 0: never split")
    p.add_argument("--report", action="store_true", help="also write DIR/report.html")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the bags the manifest holds as failed")
    p.add_argument("--max-attempts", type=int, default=MAX_ATTEMPTS, metavar="N",
                   help="runs of a bag whose worker is lost (a node gone, a crashed worker "
                   "process) before it is recorded failed (default %(default)s)")
    p.add_argument("--ray-temp-dir", type=Path, metavar="DIR",
                   help="the local Ray's session folders (logs), kept there; default: a "
                   "temporary folder removed after the run")
    p.add_argument("--overlays", action="store_true",
                   help="also write DIR/<bag>/overlays/<camera>/<frame>_overlay.png, _labels.png")
    p.add_argument("--summary", choices=SUMMARY_FORMATS,
                   help="also write DIR/<bag>/summary.<format>, as cass_bag --summary")
    p.add_argument("--storage", choices=bag_io.STORAGES, default="mcap",
                   help="storage of the output bags (default mcap)")
    p.add_argument("--no-color", dest="color", action="store_false",
                   help="do not write the /segmentation/color overlay topics")
    p.add_argument("--copy-input", action="store_true",
                   help="copy every input message into the output bags too")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _error(message: str) -> int:
    print(f"cass_fleet: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[%(name)s] %(message)s")
    # cass_bag's own log lines (one per bag and topic) are the workers' to keep
    logging.getLogger("cass_bag").setLevel(logging.WARNING)
    # SIGTERM is a Ctrl-C from here on: one that comes while the inputs are
    # searched, the settings read or Ray started ends the run as cleanly as
    # one in the middle of it (exit 130, the manifest "interrupted").
    restore = sigterm_interrupts()
    try:
        return _main(args)
    except KeyboardInterrupt:
        return _interrupted()
    finally:
        restore()


def _interrupted() -> int:
    print("cass_fleet: interrupted; run the same command again to resume", file=sys.stderr)
    return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    try:
        bags = fleet_inputs.collect(list(args.inputs), out=args.out)
    except fleet_inputs.InputError as e:
        return _error(str(e))
    # The runner imports torch and Ray lazily; its module itself is light.
    from ..fleet import runner

    fo = runner.FleetOptions(
        inputs=bags, out=args.out, params_file=args.params_file, topics=list(args.topics),
        storage=args.storage, color=args.color, copy_input=args.copy_input,
        overlays=args.overlays, summary=args.summary, address=args.address,
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, batch=args.batch,
        chunk_frames=args.chunk_frames, retry_failed=args.retry_failed,
        max_attempts=args.max_attempts, ray_temp_dir=args.ray_temp_dir)
    try:
        fo.settings = parse_set(args.settings)
        runner.check_settings(fo)
        manifest = Manifest.open(args.out, runner.fleet_fingerprint(fo))
    except (ConfigError, PromptError, ManifestError, OSError) as e:
        return _error(str(e))
    bar = _Progress(args.progress and not args.quiet)
    fo.progress = bar.update
    try:
        result = runner.run_fleet(fo, manifest)
    except (ConfigError, PromptError) as e:  # the workers could not load the model ...
        return _error(str(e))
    finally:  # (a second Ctrl-C while stopping: main says "interrupted")
        bar.close()
    if args.report:
        _report(args.out, manifest)
    counts = manifest.counts()
    fps = result.frames / result.seconds if result.seconds else 0.0
    print(f"cass_fleet: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['pending'] + counts['running']} left (this run: {result.done} done, "
          f"{result.failed} failed, {result.skipped} skipped); {result.frames} frames in "
          f"{result.seconds:.1f} s ({fps:.1f} frames/s, {result.workers} worker(s)) "
          f"-> {args.out / MANIFEST_NAME}")
    if result.interrupted:
        return _interrupted()
    return EXIT_FAILED if counts["failed"] else 0


def _report(out: Path, manifest: Manifest) -> None:
    """DIR/report.html (cass_ros.fleet.report); a failure to write it is one line."""
    try:
        from ..fleet.report import write_report
    except ImportError as e:
        print(f"cass_fleet: error: no report: {e} (the report needs matplotlib: "
              "pip install 'cass_ros[fleet]')", file=sys.stderr)
        return
    try:
        path = write_report(out, manifest.doc)
    except (OSError, ValueError, RuntimeError, bag_io.BagError) as e:
        print(f"cass_fleet: error: the report could not be written: {e}", file=sys.stderr)
        return
    print(f"cass_fleet: report in {path}")


class _Progress:
    """One bar over the frames of the whole run: bags done, frames/s, ETA."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def update(self, frames: int, total: int, bags: int, bags_total: int) -> None:
        if not self.enabled or not bags_total:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="frame", desc="cass_fleet", dynamic_ncols=True)
        self.bar.set_postfix_str(f"bags {bags}/{bags_total}", refresh=False)
        self.bar.update(max(0, min(frames, total) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    sys.exit(main())
