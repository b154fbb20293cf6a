"""A vocabulary to scan with ``describe`` (docs/algorithm.md 10): the shipped
one is the union of the eight presets' class lists (classes/vocabulary.txt),
and a long vocabulary is encoded once, in the background, into the
segmenter's text-embedding cache (memory and disk), so that nothing waits
for it: until it is done, callers are told how far it got.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import CLASSES_DIR, PRESETS
from ..prompts import prompt_set_from_settings, read_classes_file
from ..text import TextEmbedder
from .describe import name_labels

log = logging.getLogger(__name__)

VOCABULARY_FILE = CLASSES_DIR / "vocabulary.txt"
CHUNK_NAMES = 8         # names encoded per step: a step is a short lock of the text tower


def preset_vocabulary() -> list[tuple[str, ...]]:
    """The classes of the eight presets (background lines left out), in
    preset order; entries that share a name are one entry (``aeroplane,
    airplane`` and ``airplane``), their names merged in first-seen order."""
    entries: list[list[str]] = []
    where: dict[str, int] = {}              # name -> its entry
    for preset in PRESETS.values():
        classes = prompt_set_from_settings((), str(CLASSES_DIR / preset["classes_file"])).classes
        for names in classes:
            hits = sorted({where[n] for n in names if n in where})
            if not hits:
                entries.append([])
                hits = [len(entries) - 1]
            keep = hits[0]
            for other in hits[1:]:          # a class joining two entries merges them
                entries[keep] += [n for n in entries[other] if n not in entries[keep]]
                entries[other] = []
            entries[keep] += [n for n in names if n not in entries[keep]]
            for n in entries[keep]:
                where[n] = keep
    return [tuple(e) for e in entries if e]


def read_vocabulary(path: str | Path = VOCABULARY_FILE) -> list[tuple[str, ...]]:
    """Entries of a vocabulary file (the classes-file syntax: one entry per
    line, synonyms separated by ``,`` or ``|``). PromptError when unusable."""
    return read_classes_file(path)


class VocabularyEncoder:
    """Encodes a vocabulary's names on a daemon thread, a few at a time,
    through ``embedder`` (whose cache keeps them, on disk too). ``text()``
    is None until every name is encoded; ``progress()`` says how far."""

    def __init__(self, embedder: TextEmbedder, entries: Sequence[Sequence[str]]) -> None:
        self.entries = [tuple(e) for e in entries]
        self.names, _ = name_labels(self.entries)
        self._embedder = embedder
        self._done = 0
        self._text: torch.Tensor | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin encoding (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cass_vocabulary",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        unique = list(dict.fromkeys(self.names))
        try:
            for i in range(0, len(unique), CHUNK_NAMES):
                self._embedder.encode(unique[i:i + CHUNK_NAMES])
                with self._lock:
                    self._done = min(len(unique), i + CHUNK_NAMES)
            text = self._embedder.encode(self.names)      # all cached by now
        except Exception as e:  # noqa: BLE001 - reported to the caller, not fatal
            log.warning("vocabulary encoding failed: %s", e)
            with self._lock:
                self._error = f"{type(e).__name__}: {e}"
            return
        with self._lock:
            self._text = text
        log.info("vocabulary encoded: %d entries, %d names", len(self.entries), len(unique))

    def progress(self) -> tuple[int, int]:
        """(distinct names encoded, distinct names)."""
        with self._lock:
            return self._done, len(set(self.names))

    def text(self) -> torch.Tensor | None:
        """(C, E) unit embeddings of ``names``, once all are encoded."""
        with self._lock:
            return self._text

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._error

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the encoding; True when it has ended."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is not None and not thread.is_alive()


__all__ = ["VOCABULARY_FILE", "preset_vocabulary", "read_vocabulary", "VocabularyEncoder"]
