"""What the node's frames are processed with: the segmenter, the runtime
parameters and the prompt set in force (docs/ros-interface.md, Prompts and
"Behaviour under load and bad input").

The three change on different threads (parameter callback, prompt thread)
and are read by the inference thread; one lock makes every batch see one
consistent triple, so a frame never mixes two configurations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.prompt_session import ActivePrompts, PromptSession
from ..params import RuntimeParams

if TYPE_CHECKING:  # the segmenter imports torch, which loads after the parameter checks
    from ...core.segmenter import Segmenter


@dataclass(frozen=True)
class Work:
    """Everything one batch is processed with."""

    segmenter: Segmenter
    prompts: ActivePrompts
    runtime: RuntimeParams


class InForce:
    """The node's current segmenter, runtime parameters and PromptSession."""

    def __init__(self, segmenter: Segmenter, runtime: RuntimeParams) -> None:
        self._lock = threading.Lock()
        self._segmenter = segmenter
        self._runtime = runtime
        self.session = PromptSession()

    @property
    def waiting(self) -> bool:
        """No prompt set accepted yet (docs: "No prompts at start-up")."""
        return self.session.waiting

    @property
    def segmenter(self) -> Segmenter:
        return self._segmenter

    @property
    def runtime(self) -> RuntimeParams:
        return self._runtime

    def work(self) -> Work | None:
        """A consistent snapshot for one batch; None while waiting."""
        with self._lock:
            active = self.session.active
            if active is None:
                return None
            return Work(self._segmenter, active, self._runtime)

    def set_runtime(self, runtime: RuntimeParams) -> None:
        with self._lock:
            self._runtime = runtime

    def set_segmenter(self, segmenter: Segmenter, prompts: ActivePrompts | None) -> None:
        """New algorithm settings together with the prompt set prepared
        again for them (PromptSession.reprepare), in one step."""
        with self._lock:
            self._segmenter = segmenter
            if prompts is not None:
                self.session.commit(prompts)
