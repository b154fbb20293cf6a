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
name starts with ``CRASH_PREFIX``: a partial output is on disk, and no
Python error is raised. The product code is not touched; the model runs
as it does on every other bag.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

CRASH_PREFIX = "crashes_worker"


def install() -> None:
    """Wrap ``cass_ros.bag.tool.run`` in this worker process."""
    from cass_ros.bag import tool

    real = tool.run

    def run(opts: Any, segmenter: Any = None) -> Any:
        if opts.input_bag.name.startswith(CRASH_PREFIX):
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
