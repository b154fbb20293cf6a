"""Prompt sets: the classes a user asks for, with synonyms and background.

A class is one or more names (``person|pedestrian``). Label 0 is reserved
for background: it holds the background names, or none, in which case only
the probability threshold sends pixels to it (docs/algorithm.md 5.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence

BACKGROUND_LABEL = "background"

_CLASS_SEPARATORS = re.compile(r"[,;\n]")


class PromptError(ValueError):
    """A prompt text or class file that yields no usable class."""


@dataclass(frozen=True)
class PromptSet:
    """An ordered class table. ``classes[i]`` are the names of label i + 1;
    ``background`` the names of label 0 (may be empty)."""

    classes: tuple[tuple[str, ...], ...]
    background: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.classes:
            raise PromptError("a prompt set needs at least one class")
        for names in self.classes:
            if not names or any(not n for n in names):
                raise PromptError(f"empty class name in {names!r}")

    @property
    def class_names(self) -> list[str]:
        """Index = label value; ``[0]`` is ``background``."""
        return [BACKGROUND_LABEL] + [names[0] for names in self.classes]

    @property
    def synonyms(self) -> list[tuple[str, ...]]:
        """Names per label value (label 0: the background names)."""
        return [self.background] + list(self.classes)

    @property
    def num_labels(self) -> int:
        return len(self.classes) + 1

    def flat_names(self) -> tuple[list[str], list[int]]:
        """All names in label order, and each name's label value."""
        names: list[str] = []
        labels: list[int] = []
        for label, group in enumerate(self.synonyms):
            names.extend(group)
            labels.extend([label] * len(group))
        return names, labels


def _clean(name: str) -> str:
    return " ".join(name.split())


def parse_class(text: str, synonym_separators: str = "|") -> tuple[str, ...]:
    """One class from ``name|synonym|...``; empty names are dropped."""
    parts = re.split("[" + re.escape(synonym_separators) + "]", text)
    return tuple(n for n in (_clean(p) for p in parts) if n)


def parse_prompt_text(text: str) -> list[tuple[str, ...]]:
    """Classes from topic text: ``,`` ``;`` or new lines between classes,
    ``|`` between synonyms. Raises PromptError when nothing usable is left."""
    if not isinstance(text, str):
        raise PromptError(f"prompt text must be a string, got {type(text).__name__}")
    classes = [c for c in (parse_class(part) for part in _CLASS_SEPARATORS.split(text)) if c]
    if not classes:
        raise PromptError(f"no class names in prompt text {text[:80]!r}")
    return classes


def parse_prompt_list(items: Iterable[str]) -> list[tuple[str, ...]]:
    """Classes from a list, one class per element (the ``prompts`` parameter)."""
    classes = [c for c in (parse_class(str(item)) for item in items) if c]
    if not classes:
        raise PromptError("the prompt list holds no class names")
    return classes


def read_classes_file(path: str | Path) -> list[tuple[str, ...]]:
    """One class per line, ``,`` or ``|`` between synonyms: the paper's class
    files (``cls_voc21.txt`` ...) load unchanged. Blank lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PromptError(f"cannot read classes_file {path}: {e.strerror}") from None
    classes = [c for c in (parse_class(line, ",|") for line in lines) if c]
    if not classes:
        raise PromptError(f"classes_file {path} holds no class names")
    return classes


def is_background_line(names: Sequence[str], background: Sequence[str]) -> bool:
    return bool(names) and (
        tuple(names) == (BACKGROUND_LABEL,) or (bool(background) and set(names) <= set(background))
    )


def build_prompt_set(
    classes: Sequence[Sequence[str]],
    background: Sequence[str] = (),
    first_is_background: bool = False,
) -> PromptSet:
    """A PromptSet from parsed classes.

    ``first_is_background``: the first class holds the background names (a
    paper class file whose first line is the background line). That line
    then defines label 0 alone, exactly as written, even where a class line
    repeats a name (COCO-Object's ``bed``), as the reference reads the file;
    ``background`` is not added. Otherwise the ``background`` names form
    label 0, except those a class names: what the user prompts wins.
    """
    classes = [tuple(c) for c in classes]
    if first_is_background and classes:
        bg = list(dict.fromkeys(classes[0]))
        classes = classes[1:]
    else:
        prompted = {n for c in classes for n in c}
        bg = [n for n in dict.fromkeys(_clean(n) for n in background) if n and n not in prompted]
    if not classes:
        raise PromptError("no class is left once the background line is taken out")
    return PromptSet(classes=tuple(classes), background=tuple(bg))


def prompt_set_from_settings(
    prompts: Sequence[str] | str = (),
    classes_file: str = "",
    background_classes: Sequence[str] = (),
) -> PromptSet:
    """The prompt set the settings describe: ``prompts`` wins over
    ``classes_file``. A classes file whose first line is ``background`` or
    made only of the VOC background names gives label 0 that line (and
    ``background_classes`` is not added: the file says what background is)."""
    if isinstance(prompts, str):
        classes = parse_prompt_text(prompts) if prompts.strip() else []
    else:
        classes = parse_prompt_list(prompts) if any(str(p).strip() for p in prompts) else []
    if classes:
        return build_prompt_set(classes, background_classes)
    if classes_file:
        classes = read_classes_file(classes_file)
        first_bg = len(classes) > 1 and (
            classes[0] == (BACKGROUND_LABEL,) or _looks_like_background(classes[0]))
        return build_prompt_set(classes, background_classes, first_is_background=first_bg)
    raise PromptError("no prompts: set 'prompts' (or publish on /cass/prompts) "
                      "or 'classes_file'")


def _looks_like_background(names: Sequence[str]) -> bool:
    # The paper's VOC21 / COCO-Object files begin with this background line.
    from .config import VOC_BACKGROUND

    voc = {n.strip() for n in VOC_BACKGROUND.split(",")}
    return len(names) > 1 and set(names) <= voc


MAX_NAME_CHARS = 200
MAX_NAMES = 4096


def check_prompt_set(prompt_set: PromptSet) -> PromptSet:
    """Reject what parses but cannot be a class name (control characters,
    pages of text) before it reaches the text encoder; PromptError says why."""
    names, _ = prompt_set.flat_names()
    if len(names) > MAX_NAMES:
        raise PromptError(f"{len(names)} class names; at most {MAX_NAMES}")
    for name in names:
        if not name.isprintable():
            raise PromptError(f"class name {name[:40]!r} holds control characters")
        if len(name) > MAX_NAME_CHARS:
            raise PromptError(f"class name {name[:40]!r}... is longer than {MAX_NAME_CHARS} "
                              "characters")
    return prompt_set
