"""cass_fleet's inputs: which bags, and where each one's outputs go
(docs/ros-interface.md, cass_fleet).

An INPUT is a bag (a rosbag2 folder, one ``.mcap`` / ``.db3`` file, or a
ROS 1 ``.bag`` file: docs/ros-interface.md, cass_bag's input kinds), a
folder searched recursively for bags, or ``@list.txt``: one INPUT a line
(``#`` starts a comment; relative paths are relative to the list's folder).
A folder is a bag when it holds ``metadata.yaml`` or storage files of its
own (a recording never closed has no metadata.yaml: cass_bag reads its
files, so this does too); the search does not look inside a bag, and takes
each ROS 1 ``.bag`` file of other folders as a bag of its own. A folder
given as an INPUT in which no bag is found is kept as one "bag": cass_bag's
reading then says why it is none, and the manifest records it as failed.

Outputs: ``DIR/<the bag's path relative to the bags' common folder>/``, a
bag file's suffix dropped (``a/rec.mcap`` -> ``DIR/a/rec/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..bag.inputs import ROS1_SUFFIX
from ..bag.io import BAG_FILE_SUFFIXES, STORAGE_SUFFIXES


class InputError(ValueError):
    """An INPUT that cannot be used (missing path, empty list, clash); one line."""


@dataclass(frozen=True)
class BagInput:
    """One bag to run: its path as given (absolute) and its output folder
    relative to DIR (POSIX form, the manifest's)."""

    path: Path
    output: str


def is_bag(path: Path) -> bool:
    """A rosbag2 folder, a storage file or a ROS 1 bag file."""
    if path.is_file():
        return path.suffix in BAG_FILE_SUFFIXES
    if not path.is_dir():
        return False
    if (path / "metadata.yaml").is_file():
        return True
    return any(p.suffix in STORAGE_SUFFIXES and p.is_file() for p in path.iterdir())


def find_bags(folder: Path, exclude: Path | None = None) -> list[Path]:
    """The bags under ``folder`` (itself included), sorted; not inside bags
    nor inside ``exclude`` (DIR: a second run must not take the first
    one's outputs for inputs)."""
    if is_bag(folder):
        return [folder]
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = [d for d in dirs if here / d != exclude]
        bags = {d for d in dirs if is_bag(here / d)}
        found.extend(here / d for d in bags)
        found.extend(here / f for f in files if Path(f).suffix == ROS1_SUFFIX)
        dirs[:] = sorted(d for d in dirs if d not in bags)  # never inside a bag
        # (storage files directly in a folder make it a bag: none are here)
    return sorted(found)


def _expand(item: str, base: Path, seen_lists: set[Path], exclude: Path | None
            ) -> list[Path]:
    if item.startswith("@"):
        listing = Path(os.path.normpath((base / item[1:]).absolute()))
        if listing in seen_lists:
            raise InputError(f"{item}: the list includes itself")
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise InputError(f"cannot read the input list {listing}: {e.strerror or e}") from None
        out: list[Path] = []
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line:
                out.extend(_expand(line, listing.parent, seen_lists | {listing}, exclude))
        if not out:
            raise InputError(f"the input list {listing} names no input")
        return out
    path = Path(os.path.expanduser(item))
    # normpath, not resolve: '..' goes, symlinked folders keep their names
    path = Path(os.path.normpath((path if path.is_absolute() else base / path).absolute()))
    if not path.exists():
        raise InputError(f"input {item} does not exist")
    if path.is_dir() and not is_bag(path):
        return find_bags(path, exclude) or [path]  # no bag in it: kept, to fail with cass_bag's reason
    return [path]


def collect(items: list[str], cwd: Path | None = None, out: Path | None = None
            ) -> list[BagInput]:
    """The bags of the INPUT arguments, in the order given (each once), with
    their output folders; InputError when an INPUT is unusable, overlaps
    ``out`` (DIR, never searched) or two bags would write to one folder."""
    base = (cwd or Path.cwd()).absolute()
    exclude = Path(os.path.normpath(base / out)) if out is not None else None
    paths: list[Path] = []
    for item in items:
        paths.extend(_expand(item, base, set(), exclude))
    for p in paths:
        if exclude is not None and (p == exclude or p.is_relative_to(exclude)
                                    or exclude.is_relative_to(p)):
            raise InputError(f"input {p} and --out {out} overlap")
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise InputError("no input bag")
    root = Path(os.path.commonpath([p.parent for p in paths]))
    bags: list[BagInput] = []
    by_output: dict[str, Path] = {}
    for p in paths:
        rel = p.relative_to(root)
        if p.is_file() and p.suffix in BAG_FILE_SUFFIXES:
            rel = rel.with_suffix("")
        output = rel.as_posix()
        if output in by_output:
            raise InputError(f"{by_output[output]} and {p} would both write DIR/{output}; "
                             "run them separately")
        by_output[output] = p
        bags.append(BagInput(p, output))
    return bags
