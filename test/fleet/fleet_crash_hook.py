"""A Ray worker-process setup hook for test_fleet_cluster: a bag that
kills the worker process running it, every time.

What a segfault in a native decoder, or the kernel's OOM killer, does to a
cass_fleet worker is end its process mid-bag; Ray then reports the actor
dead (``ActorDiedError``). No input bag does that to the tiny test model, so
the tests make one: Ray runs this hook in each worker process at its start
(``runtime_env={"worker_process_setup_hook": "fleet_crash_hook.install"}``,
given to the driver's ``ray.init`` by ``RAY_JOB_CONFIG_JSON_ENV_VAR``, the
variable ``ray job submit`` uses), and it makes ``cass_bag``'s run end the
process with ``os._exit`` after the first frame of any bag whose folder
name starts with ``CRASH_PREFIX``, and of the chunks after the first of a
bag named ``ONCE_PREFIX...`` the first time each is run, and of a bag
named ``THRICE_PREFIX...`` the first three times it is run, over runs of
cass_fleet (both remembered by files in ``$CASS_FLEET_TEST_MARKERS``): a
partial output is on disk, and no
Python error is raised. The product code is not touched; the model runs
as it does on every other bag.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

CRASH_PREFIX = "crashes_worker"   # every time
ONCE_PREFIX = "crashes_once"      # the first time a chunk after the first is run
THRICE_PREFIX = "crashes_thrice"  # the first three times the bag is run
MARKERS = "CASS_FLEET_TEST_MARKERS"  # the folder where "once" is remembered


def _crashes(opts: Any) -> bool:
    """Whether this run of ``cass_bag`` ends its process."""
    name = opts.input_bag.name
    if name.startswith(CRASH_PREFIX):
        return True
    if name.startswith(THRICE_PREFIX):
        for n in (1, 2, 3):
            try:
                (Path(os.environ[MARKERS]) / f"{name}.run{n}").touch(exist_ok=False)
            except FileExistsError:
                continue
            return True
        return False
    if not name.startswith(ONCE_PREFIX) or not opts.frame_range or not opts.frame_range[0]:
        return False
    marker = Path(os.environ[MARKERS]) / f"{name}.{opts.frame_range[0]}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def install() -> None:
    """Wrap ``cass_ros.bag.tool.run`` in this worker process."""
    from cass_ros.bag import tool

    real = tool.run

    def run(opts: Any, segmenter: Any = None) -> Any:
        if _crashes(opts):
            seen = [0]
            tick = opts.on_frame

            def crash() -> None:
                seen[0] += 1
                if seen[0] == 2:          # the first frame is written by now
                    os._exit(1)
                if tick is not None:
                    tick()

            opts = dataclasses.replace(opts, on_frame=crash)
        return real(opts, segmenter)

    tool.run = run
