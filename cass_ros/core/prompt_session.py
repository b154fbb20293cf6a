"""Prompt changes as the node and cass_bag apply them (docs/ros-interface.md,
Prompts): one state machine for both, so a prompt set found in a bag and one
published to a running node are checked, numbered and coloured alike.

- ``request`` validates a set (check_prompt_set) and says whether it is new:
  a repeat of the set last asked for is ignored;
- ``activate`` prepares it (the slow text encoding) and only then gives it
  the next prompt_id, so ids increase by one per accepted set with no gap
  when a preparation fails;
- the active set is one immutable ActivePrompts, swapped as a whole.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .prompts import PromptSet, check_prompt_set
from .visualize import palette

if TYPE_CHECKING:  # the segmenter imports torch; this module need not
    from .prepared_prompts import PreparedPrompts
    from .segmenter import Segmenter


@dataclass(frozen=True)
class ActivePrompts:
    """A prompt set in force with everything a frame needs."""

    prompt_id: int
    prepared: PreparedPrompts
    colors: np.ndarray              # (K, 3) uint8 overlay colour per label

    @property
    def prompt_set(self) -> PromptSet:
        return self.prepared.prompt_set

    @property
    def class_names(self) -> list[str]:
        return self.prepared.class_names


class PromptSession:
    """prompt_id counter, repeat rule and active set. ``request`` may be
    called from any thread; ``activate`` / ``reprepare`` from one thread at a
    time (the node's prompt thread, or the bag tool's loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_id = 0
        self._requested: PromptSet | None = None
        self.active: ActivePrompts | None = None

    @property
    def waiting(self) -> bool:
        """No prompt set accepted yet."""
        return self.active is None

    def request(self, prompt_set: PromptSet) -> bool:
        """Validate ``prompt_set`` (PromptError says why not) and note it as
        the set asked for. False when it repeats the last one asked for."""
        check_prompt_set(prompt_set)
        with self._lock:
            if prompt_set == self._requested:
                return False
            self._requested = prompt_set
            return True

    def activate(self, segmenter: Segmenter, prompt_set: PromptSet) -> ActivePrompts:
        """Prepare ``prompt_set`` on ``segmenter`` and make it the active set
        with the next prompt_id. When preparing raises, nothing changes and
        the same set may be asked for again."""
        try:
            prepared = segmenter.prepare_prompts(prompt_set, prompt_id=self._last_id + 1)
        except BaseException:
            with self._lock:
                if self._requested == prompt_set:
                    self._requested = self.active.prompt_set if self.active else None
            raise
        active = ActivePrompts(prepared.prompt_id, prepared, palette(prompt_set.num_labels))
        with self._lock:
            self._last_id = active.prompt_id
            self.active = active
        return active

    def reprepare(self, segmenter: Segmenter) -> ActivePrompts | None:
        """The active set prepared again on ``segmenter`` (new algorithm
        settings: the clusters follow cluster_threshold), same prompt_id.
        The caller swaps it in together with the segmenter."""
        old = self.active
        if old is None:
            return None
        prepared = segmenter.prepare_prompts(old.prompt_set, prompt_id=old.prompt_id)
        return ActivePrompts(old.prompt_id, prepared, old.colors)

    def commit(self, active: ActivePrompts) -> None:
        """Make a ``reprepare`` result the active set."""
        with self._lock:
            self.active = active
