"""``DIR/fleet.json``: what a cass_fleet run was asked, and where each bag
stands (docs/ros-interface.md, cass_fleet; README, "cass_fleet").

The file is rewritten whole after every change of a bag's status (a temporary
file, then ``os.replace``), so whatever stops a run (Ctrl-C, a lost worker,
a power cut) leaves the previous or the next version, never half of one.
Its format (``"format": 1``)::

    {
      "format": 1,
      "tool": "cass_fleet",
      "fingerprint": {...},      # everything that defines the outputs (below)
      "settings_hash": "...",    # sha256 of the fingerprint, 16 hex digits
      "started": "2025-...Z",    # this run's start and end (UTC, ISO 8601);
      "finished": null,          # null while it runs or when it was stopped
      "state": "running" | "finished" | "interrupted",
      "bags": [                  # one per bag ever given to this DIR, in order
        {
          "input": "/abs/path/of/the/bag",
          "output": "site_a/run_03",      # the output bag: DIR/<output>/
          "status": "pending" | "running" | "done" | "failed",
          "reason": "...",                # failed only: one line, cass_bag's words
          "truncated": false,             # read from a recording cut short
          "recovered_messages": null,     # truncated only: the messages and
          "recovered_frames": null,       # frames that could be read
          "frames": 120,                  # frames segmented (written)
          "frames_in": 120,               # frames read on the chosen topics
          "seconds": 12.3,                # model time of the bag (its chunks summed)
          "frames_per_second": 9.8,
          "topics": [{"topic": "/camera/image_raw", "camera": "camera",
                      "type": "sensor_msgs/msg/Image"}],
          "prompt_ids": [1, 2],           # the prompt_ids of the frames written
          "chunks": 1,                    # parts it ran in (--chunk-frames)
          "counts": {...},                # cass_bag's report: bad frames, prompts
          "attempts": 1,                  # runs of it in the last run that ran it:
                                          # 1, plus one per job of it whose worker
                                          # was lost (0: not started)
          "nodes": ["<ray node id>"],     # the Ray nodes its chunks ran on (while
                                          # running: run on), each once
          "lost": [{"node": "...", "chunk": 0, "reason": "worker lost: ..."}],
                                          # each job of it whose worker died
          "finished": "2025-...Z"         # when its status last changed
        }
      ]
    }

The fingerprint is ``{"cass_ros": version, "parameters": every node
parameter (defaults, then the parameters file, then --set), "weights":
{"clip": ..., "dino": ...}, "outputs": the flags that shape the output
bags}``; ``device`` and ``weights_cache_dir`` are left out, as cass_eval
leaves them out of its own (they do not change what is computed), and so
are ``--batch``, ``--chunk-frames`` and the Ray flags. A weights file is
identified by its path, size and a hash of its first and last MiB (a whole
hash would read gigabytes each run); a hub name by itself.

Resume rules (``Manifest.open`` and ``todo``): a DIR whose manifest has
another fingerprint is refused, naming what differs (as ``cass_eval
--out``); "done" bags are skipped (run again when their output folder is
gone); "failed" ones are skipped unless ``--retry-failed``; "pending" and
"running" ones (a run stopped while they ran) are run again, their partial
outputs having never left ``DIR/.fleet_tmp/``, which each run empties.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .inputs import BagInput

FORMAT = 1
MANIFEST_NAME = "fleet.json"
TMP_NAME = ".fleet_tmp"           # partial outputs, inside DIR (same filesystem: rename)
NOT_FINGERPRINTED = ("device", "weights_cache_dir")
STATUSES = ("pending", "running", "done", "failed")
# The output flags' values when not given (cass_fleet's command line), which
# the report compares the fingerprint's "outputs" with.
OUTPUT_DEFAULTS = {"topics": [], "storage": "mcap", "color": True, "copy_input": False,
                   "overlays": False, "summary": None}
MAX_ATTEMPTS = 3                  # runs of a bag whose worker is lost (--max-attempts)
_HASH_SPAN = 1 << 20              # bytes hashed at each end of a weights file


class ManifestError(ValueError):
    """A DIR that cannot be used (another run's settings, an unreadable manifest)."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def weights_identity(value: str) -> Any:
    """A weights setting as the fingerprint holds it: a file by path, size
    and head-and-tail hash; anything else (a hub name, "") as it is."""
    path = Path(os.path.expanduser(str(value))) if value else None
    if path is None or not path.is_file():
        return value
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(_HASH_SPAN))
        if size > 2 * _HASH_SPAN:
            f.seek(size - _HASH_SPAN)
            digest.update(f.read(_HASH_SPAN))
    return {"path": str(path.absolute()), "bytes": size, "sha256_ends": digest.hexdigest()}


def fingerprint(version: str, parameters: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """The settings that define the outputs, JSON-normal (tuples as lists)."""
    params = {k: v for k, v in sorted(parameters.items()) if k not in NOT_FINGERPRINTED}
    weights = {"clip": weights_identity(params.get("clip_weights", "")),
               "dino": weights_identity(params.get("dino_weights", ""))}
    doc = {"cass_ros": version, "parameters": params, "weights": weights, "outputs": outputs}
    return json.loads(json.dumps(doc, default=str))


def settings_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two fingerprints differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(name)
            else:
                out.extend(differences(old[key], new[key], name))
        return out
    return [] if old == new else [prefix or "fingerprint"]


class Manifest:
    """The manifest of one DIR, kept in memory and written on each change."""

    def __init__(self, out_dir: Path, doc: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.doc = doc
        self._by_input = {b["input"]: b for b in doc["bags"]}

    @classmethod
    def open(cls, out_dir: Path, fp: dict[str, Any]) -> Manifest:
        """Start or resume the run of ``out_dir``; ManifestError when it holds
        a run with other settings (naming what differs) or is unreadable."""
        path = out_dir / MANIFEST_NAME
        if path.exists():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                ok = doc.get("format") == FORMAT and isinstance(doc.get("bags"), list)
            except (OSError, ValueError) as e:
                raise ManifestError(f"cannot read {path}: {e}") from None
            if not ok:
                raise ManifestError(f"{path} is not a cass_fleet manifest of format {FORMAT}")
            diff = differences(doc.get("fingerprint"), fp)
            if diff:
                shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
                raise ManifestError(f"{out_dir} holds the outputs of a run with other settings "
                                    f"(differs in: {shown}); use another --out or empty it")
        elif out_dir.exists() and any(p.name != TMP_NAME for p in out_dir.iterdir()):
            raise ManifestError(f"--out {out_dir} exists, is not empty and holds no "
                                f"{MANIFEST_NAME}; use a new or empty folder")
        else:
            doc = {"format": FORMAT, "tool": "cass_fleet", "fingerprint": fp,
                   "settings_hash": settings_hash(fp), "bags": []}
        doc.update(started=now(), finished=None, state="running")
        return cls(out_dir, doc)

    # ------------------------------------------------------------ bags

    @property
    def bags(self) -> list[dict[str, Any]]:
        return self.doc["bags"]

    def entry(self, bag: BagInput) -> dict[str, Any]:
        """The bag's record, added as "pending" when new."""
        key = str(bag.path)
        if key not in self._by_input:
            record = {"input": key, "output": bag.output, "status": "pending"}
            self.doc["bags"].append(record)
            self._by_input[key] = record
        return self._by_input[key]

    def todo(self, bags: list[BagInput], retry_failed: bool) -> list[BagInput]:
        """The bags this run has to do, by the resume rules (module docstring)."""
        out = []
        for bag in bags:
            record = self.entry(bag)
            status = record["status"]
            if status == "done" and (self.out_dir / record["output"]).is_dir():
                continue
            if status == "failed" and not retry_failed:
                continue
            record["output"] = bag.output  # (a resumed run may name it anew)
            out.append(bag)
        return out

    def set_status(self, bag: BagInput, status: str, **fields: Any) -> None:
        """Change a bag's status (and fields), and write the manifest."""
        assert status in STATUSES, status
        record = self.entry(bag)
        if status != "failed":
            record.pop("reason", None)
        record.update(fields, status=status, finished=now())
        self.save()

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for b in self.bags:
            out[b["status"]] = out.get(b["status"], 0) + 1
        return out

    # ------------------------------------------------------------ writing

    def finish(self, state: str) -> None:
        self.doc["state"] = state
        self.doc["finished"] = now() if state == "finished" else None
        self.save()

    def save(self) -> None:
        """Atomically: a temporary file beside it, then os.replace."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
