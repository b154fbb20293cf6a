"""/diagnostics and the summary line from the cameras' statistics
(docs/ros-interface.md, "Diagnostics and log").

Pure functions of plain data (CameraBoard.stats and what is in force):
building a DiagnosticArray needs no ROS context, so the level rules are
unit-tested without DDS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

STALE_AFTER_S = 5.0        # a camera without images this long is reported WARN
WAITING_MESSAGE = "waiting for prompts"

Stats = Mapping[str, object]


@dataclass(frozen=True)
class Facts:
    """What the statuses report besides the counters."""

    device: str
    model: str
    prompt_id: int | None           # None: no prompt set accepted yet
    classes: int                    # prompted classes (0 while waiting)


def level_and_message(s: Stats, waiting: bool) -> tuple[bytes, str]:
    """A camera's level and message, in the order of the interface's table:
    waiting for prompts, no images yet, silent, inference fails, OK."""
    silent = s["silent_s"]
    if waiting:
        return DiagnosticStatus.WARN, WAITING_MESSAGE
    if silent is None:
        return DiagnosticStatus.WARN, f"no images yet on {s['topic']}"
    if float(silent) > STALE_AFTER_S:
        return DiagnosticStatus.WARN, f"no images for {float(silent):.0f} s on {s['topic']}"
    if s["failed"] and s["processed"] == 0:
        return DiagnosticStatus.ERROR, "inference fails"
    return DiagnosticStatus.OK, f"{s['rate_hz']:.1f} Hz, {s['latency_ms']:.0f} ms"


def _value_text(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def camera_status(s: Stats, node_name: str, now: Facts) -> DiagnosticStatus:
    """One camera's status, named ``<node's full name>: camera <cam>``."""
    st = DiagnosticStatus()
    st.name = f"{node_name}: camera {s['camera']}"
    st.hardware_id = now.device
    st.level, st.message = level_and_message(s, now.prompt_id is None)
    values = {k: v for k, v in s.items() if k not in ("camera", "silent_s")}
    values.update(device=now.device, model=now.model,
                  prompt_id=0 if now.prompt_id is None else now.prompt_id, classes=now.classes)
    st.values = [KeyValue(key=k, value=_value_text(v)) for k, v in values.items()]
    return st


def diagnostic_array(stats: Sequence[Stats], node_name: str, now: Facts,
                     stamp: Time) -> DiagnosticArray:
    """The /diagnostics message: one status per camera."""
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = [camera_status(s, node_name, now) for s in stats]
    return arr


def summary_line(stats: Sequence[Stats], now: Facts) -> str:
    """The log line every SUMMARY_PERIOD_S: per camera rate, latency and
    counts (the frames waiting while no prompt set is in force), then the
    device and the prompt set."""
    parts = [f"{s['camera']}: {s['rate_hz']:.1f} Hz, {s['latency_ms']:.0f} ms latency, "
             f"{s['processed']} done, {s['dropped']} dropped, {s['rejected']} rejected"
             + (f", {s['waiting']} waiting" if now.prompt_id is None else "")
             for s in stats]
    prompts = "no prompts yet" if now.prompt_id is None else f"prompt_id {now.prompt_id}"
    return " | ".join(parts) + f" | {now.device}, {prompts}"
