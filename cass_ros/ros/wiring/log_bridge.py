"""Python logging of the cass_ros library into the node's ROS logger, so
that users see e.g. the random-weights warning and the text-encoding line
in the node's log (docs/ros-interface.md, "Diagnostics and log")."""

from __future__ import annotations

import logging

from rclpy.impl.rcutils_logger import RcutilsLogger

LIBRARY_LOGGER = "cass_ros"


class RosLogHandler(logging.Handler):
    """Forwards records at INFO and above, keeping their severity."""

    def __init__(self, logger: RcutilsLogger) -> None:
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.ERROR:
                self._logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._logger.warning(text)
            else:
                self._logger.info(text)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


def attach(logger: RcutilsLogger) -> RosLogHandler:
    """Route the library's logging to ``logger`` until ``detach``."""
    handler = RosLogHandler(logger)
    lib_log = logging.getLogger(LIBRARY_LOGGER)
    lib_log.addHandler(handler)
    lib_log.setLevel(logging.INFO)
    return handler


def detach(handler: RosLogHandler) -> None:
    logging.getLogger(LIBRARY_LOGGER).removeHandler(handler)
