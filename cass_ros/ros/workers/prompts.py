"""The prompt thread (docs/ros-interface.md, Prompts and "Off the executor"):
accepted prompt sets are encoded here and swapped in as one ActivePrompts;
run-time algorithm settings are applied here, with the prompt set in force
prepared again for them. The numbering, repeat rule and palette are the
library's PromptSession (cass_ros.core.prompt_session), held by InForce.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from rclpy.impl.rcutils_logger import RcutilsLogger

from ...core.config import CassConfig
from ...core.prompt_session import ActivePrompts, PromptSession
from ...core.prompts import PromptSet
from .in_force import InForce

Job = Callable[[], None]


def keeping(session: PromptSession) -> str:
    """What stays in force when a change fails, for the warning."""
    active = session.active
    return "still waiting for prompts" if active is None else \
        f"keeping prompt_id {active.prompt_id}"


class PromptWorker:
    """One daemon thread running jobs in the order they were accepted.
    Daemon and never joined: a stop must not wait for a text encoding."""

    def __init__(self, in_force: InForce, announce: Callable[[ActivePrompts], None],
                 logger: RcutilsLogger, stop: threading.Event,
                 settings_applied: Callable[[], None] | None = None) -> None:
        self._in_force = in_force
        self._announce = announce       # publish the class table, wake the frames
        self._settings_applied = settings_applied   # e.g. label_info's threshold
        self._log = logger
        self._stop = stop
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="cass_prompts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Let the thread end after the job in progress (not waited for)."""
        self._jobs.put(None)

    def join(self, timeout_s: float) -> bool:
        """After ``close``: wait up to ``timeout_s`` for the thread to end (a
        managed node's cleanup, so that what it holds is freed); whether it did."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def submit_prompts(self, prompt_set: PromptSet) -> None:
        """A set PromptSession.request accepted as new."""
        self._jobs.put(lambda: self._activate(prompt_set))

    def submit_config(self, config: CassConfig) -> None:
        """Validated algorithm settings (params.check_config_change)."""
        self._jobs.put(lambda: self._reconfigure(config))

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                return
            job()

    def _activate(self, prompt_set: PromptSet) -> None:
        """Encode the texts (slow, cached per name), then make the set the
        active one with the next prompt_id and announce it."""
        try:
            active = self._in_force.session.activate(self._in_force.segmenter, prompt_set)
        except Exception as e:  # noqa: BLE001 - keep the old set, say why
            if not self._stop.is_set():
                self._log.error(f"cannot prepare prompts ({type(e).__name__}: {e}); "
                                f"{keeping(self._in_force.session)}")
            return
        try:
            self._announce(active)
        except Exception as e:  # noqa: BLE001 - the thread must outlive a failed publish
            if not self._stop.is_set():     # while stopping: publishers already destroyed
                self._log.error(f"cannot announce prompt_id {active.prompt_id} "
                                f"({type(e).__name__}: {e})")
            return
        self._log.info(f"prompt_id {active.prompt_id}: " + ", ".join(active.class_names[1:]))

    def _reconfigure(self, config: CassConfig) -> None:
        """The new algorithm settings on the same models (no weights read);
        the prompt set in force is prepared again (its clusters follow
        cluster_threshold), keeps its prompt_id, and both swap in together."""
        try:
            segmenter = self._in_force.segmenter.with_config(config)
            prompts = self._in_force.session.reprepare(segmenter)
            self._in_force.set_segmenter(segmenter, prompts)
        except Exception as e:  # noqa: BLE001 - keep the old settings, say why
            if not self._stop.is_set():
                self._log.error(f"cannot apply the new settings ({type(e).__name__}: "
                                f"{e}); keeping the old ones")
            return
        if self._settings_applied is not None:
            try:
                self._settings_applied()
            except Exception as e:  # noqa: BLE001 - as for announce
                if not self._stop.is_set():
                    self._log.error(f"cannot announce the new settings ({type(e).__name__}: "
                                    f"{e})")
        self._log.info(f"settings in force: {segmenter.describe()}")
