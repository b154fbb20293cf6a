"""Loading the node's segmenter (docs/ros-interface.md, Model): one line,
never a traceback, when it cannot start; the preset's settings logged; the
compiled trunks warmed up before "ready"."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rclpy.impl.rcutils_logger import RcutilsLogger

from ...core.config import CassConfig, ConfigError
from .. import params as node_params

if TYPE_CHECKING:  # torch loads in load_segmenter, after the parameter checks
    from ...core.segmenter import Segmenter


class StartupError(RuntimeError):
    """The node cannot start; the message is one line naming the parameter."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_segmenter(config: CassConfig) -> Segmenter:
    """The segmenter, or StartupError saying which parameter to change."""
    # Imported here, not at the top: the segmenter imports torch, and
    # importing the node must stay quick (parameter errors in a second).
    from ...core.models import WeightsError
    from ...core.segmenter import Segmenter

    try:
        return Segmenter(config)
    except (ConfigError, WeightsError) as e:
        raise StartupError(one_line(str(e))) from None
    except Exception as e:  # noqa: BLE001 - one line at start-up, not a traceback
        if os.environ.get("CASS_ROS_DEBUG"):
            raise
        raise StartupError(one_line(
            f"cannot load the models ({type(e).__name__}: {e}); check 'clip_model', "
            "'clip_weights', 'dino_model', 'dino_weights' and 'device' "
            "(CASS_ROS_DEBUG=1 shows the traceback)")) from None


def log_preset(config: CassConfig, log: RcutilsLogger) -> None:
    """What a preset changed, in one line."""
    changes = node_params.changed_from_preset(config) if config.preset else {}
    if changes:
        log.info(f"preset '{config.preset}' sets "
                 + ", ".join(f"{k}={v!r}" for k, v in changes.items()))


def warm_up(segmenter: Segmenter, cameras: int, log: RcutilsLogger) -> None:
    """``compile``: the compiled trunks are built before "ready", for a
    640 x 480 frame alone and for one from every camera in one batch."""
    log.info(f"compile {segmenter.config.compile}: warming up (a first compilation takes "
             "tens of seconds)")
    seconds = segmenter.warm_up(batches=(1, cameras))
    log.info(f"warm-up done in {seconds:.1f} s")


__all__ = ["StartupError", "one_line", "load_segmenter", "log_preset", "warm_up"]
