"""Tracks: one camera's instances followed from frame to frame
(docs/algorithm.md 11).

Per class, this frame's instances are associated with the live tracks of
that class by mask overlap (IoU of the track's last mask and the instance's
mask), one optimal assignment per class (scipy's linear_sum_assignment),
pairs under ``min_iou`` rejected; with depth, an instance whose 3D centroid
is farther than ``max_distance_m`` from the track's is not its continuation.
A track without an instance survives ``max_missed`` frames, keeping its last
mask, so an object hidden for a moment is matched back where it was; a new
track is published after ``min_hits`` consecutive frames. Ids increase from
1 and are never reused. The tracks restart by the temporal streams' rule
(core.continuity.continues): a new prompt_id, a new size, a stamp going back
or a gap over ``reset_gap_s``.

Re-identification (``reid_seconds`` > 0, with per-instance embeddings
given to ``Tracker.update``): a track that ends (missed more than
``max_missed`` frames) is kept for ``reid_seconds`` with its embedding,
class and last 3D centroid; a new instance of the same class whose cosine
with it is at least ``reid_min_cosine`` (and, where both have a 3D
centroid, within ``max_distance_m`` of where it was last) takes its id back,
one-to-one per class (the most pairs, then the largest summed cosine).

The overlaps come from one np.bincount over (track, instance) pairs of the
tracks' remembered pixels, no loop over pixels; the loop is over classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..config import ConfigError
from ..continuity import continues
from .instances import Instances


@dataclass(frozen=True)
class TrackParams:
    """How instances are followed (the node's ``track_*`` parameters)."""

    min_iou: float = 0.3          # track_min_iou
    max_missed: int = 5           # track_max_missed
    min_hits: int = 1             # track_min_hits
    max_distance_m: float = 1.0   # track_max_distance_m (with depth)
    reset_gap_s: float = 1.0      # temporal_reset_gap_s
    reid_seconds: float = 0.0     # track_reid_seconds: ended tracks kept this long; 0 = off
    reid_min_cosine: float = 0.8  # track_reid_min_cosine, in [-1, 1]

    @property
    def reidentifies(self) -> bool:
        """Whether ended tracks are kept for re-identification."""
        return self.reid_seconds > 0.0

    def validate(self, prefix: str = "track_") -> TrackParams:
        """Raise ConfigError naming the parameter (``prefix`` + field name),
        as TemporalParams does; ``reset_gap_s`` is named as the temporal
        parameter it comes from (``temporal_reset_gap_s``)."""
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"parameter '{name}' {why}")

        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def count(v: object, low: int) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low

        need(number(self.min_iou) and 0.0 <= self.min_iou <= 1.0, f"{prefix}min_iou",
             f"must be in [0, 1], not {self.min_iou!r}")
        need(count(self.max_missed, 0), f"{prefix}max_missed",
             f"must be an integer >= 0, not {self.max_missed!r}")
        need(count(self.min_hits, 1), f"{prefix}min_hits",
             f"must be an integer >= 1 (1 = at once), not {self.min_hits!r}")
        need(number(self.max_distance_m) and self.max_distance_m > 0.0,
             f"{prefix}max_distance_m", f"must be > 0 m, not {self.max_distance_m!r}")
        need(number(self.reset_gap_s) and self.reset_gap_s > 0.0, "temporal_reset_gap_s",
             f"must be > 0 s, not {self.reset_gap_s!r}")
        need(number(self.reid_seconds) and self.reid_seconds >= 0.0, f"{prefix}reid_seconds",
             f"must be >= 0 s (0 = off), not {self.reid_seconds!r}")
        need(number(self.reid_min_cosine) and -1.0 <= self.reid_min_cosine <= 1.0,
             f"{prefix}reid_min_cosine", f"must be in [-1, 1], not {self.reid_min_cosine!r}")
        return self


@dataclass(frozen=True)
class Track:
    """One track after a frame."""

    id: int                      # unique per tracker, from 1, never reused
    class_id: int
    instance: int                # its instance (1..n) in this frame; 0 when missed
    age: int                     # frames since it was created (0 on that frame; a
                                 # re-identified track's age goes on from its first life)
    missed: int                  # frames since last seen (0 = seen this frame)
    hits: int                    # consecutive frames seen (0 when missed)
    box: tuple[int, int, int, int]   # last box x, y, width, height
    published: bool              # min_hits reached once, and seen this frame


@dataclass
class _State:
    """A live track's mutable state."""

    id: int
    class_id: int
    instance: int
    age: int
    missed: int
    hits: int
    box: tuple[int, int, int, int]
    confirmed: bool              # reached min_hits once: published whenever seen
    centroid: np.ndarray         # (3,) last 3D centroid; NaN without depth
    # The sum of its instances' unit embeddings (float64), None before the
    # first: its embedding is this sum normalised, i.e. the direction of the
    # mean over every frame it was seen. A plain mean rather than a moving
    # average: a track's views (a few seconds of one object) weigh equally,
    # so a frame or two of a partly hidden or badly cut instance (the frames
    # just before it is lost, typically) barely moves it, and the
    # comparison made after it is lost is with the object as it was seen
    # all along.
    embedding_sum: np.ndarray | None = None

    def frozen(self) -> Track:
        return Track(self.id, self.class_id, self.instance, self.age, self.missed, self.hits,
                     self.box, self.confirmed and self.missed == 0)


@dataclass(eq=False)                 # compared by identity (list.remove)
class _Ended:
    """A track that ended (missed more than max_missed frames), kept for
    re-identification: its state as it ended, the stamp and the tracker's
    frame number of that frame."""

    state: _State
    stamp: float
    frame: int


class Tracker:
    """One camera's tracks (docs/algorithm.md 11).

    Not thread-safe: one tracker is fed by one thread, frames in stamp order.
    """

    def __init__(self, params: TrackParams | None = None, first_id: int = 1) -> None:
        self.params = (params or TrackParams()).validate()
        self.resets = 0                     # how often it started over (not counting reset())
        self._next_id = int(first_id)
        self.reset()

    @property
    def next_id(self) -> int:
        """The id the next new track gets."""
        return self._next_id

    def reset(self) -> None:
        """Forget the tracks; the next frame starts afresh (ids go on)."""
        self._tracks: list[_State] = []     # ordered by id
        # the live tracks' last masks: flat pixel indices and each one's track (slot)
        self._pixels = np.zeros(0, np.int64)   # (M,)
        self._slots = np.zeros(0, np.int64)    # (M,) index into self._tracks
        self._key: tuple[int, tuple[int, int]] | None = None
        self._stamp: float | None = None
        self._ended: list[_Ended] = []      # ended tracks for re-identification, by end
        self._frame = 0                     # frames since the reset
        self._width: int | None = None      # the embeddings' width (c) the tracks hold

    def set_params(self, params: TrackParams) -> None:
        """New parameters; the tracks are kept (they apply from the next frame)."""
        self.params = params.validate()

    def update(self, instances: Instances, prompt_id: int, stamp_s: float,
               embeddings: object | None = None) -> list[Track]:
        """Associate this frame's ``instances`` with the tracks; every live
        track after it (published or not), ordered by id.

        ``embeddings``: optional (n, c) per-instance embeddings (numpy or a
        torch tensor on any device; row i - 1 is instance i's, e.g.
        core.queries.pooling.pool_regions over ``instances.index``), used
        for re-identification when ``params.reid_seconds`` > 0; rows are
        L2-normalised here, a zero or non-finite row counts as none. None:
        nothing is kept or compared (exactly the tracker without them)."""
        index = instances.index                                 # (H, W)
        key = (int(prompt_id), (int(index.shape[0]), int(index.shape[1])))
        stamp_s = float(stamp_s)
        if not continues(self._key, self._stamp, key, stamp_s, self.params.reset_gap_s):
            self.reset()
            self.resets += 1
        self._key, self._stamp = key, stamp_s
        self._frame += 1

        n = instances.count
        p = self.params
        emb, has_emb = self._embeddings(embeddings, n)          # (n, c) unit, (n,) bool
        if p.reidentifies:                                      # drop those ended too long ago
            self._ended = [e for e in self._ended if stamp_s - e.stamp <= p.reid_seconds]
        else:
            self._ended = []
        match = self._associate(instances)                      # (T,) instance 0..n-1 or -1
        cent = _centroids(instances)                            # (n, 3)
        alive: list[_State] = []
        new_slot = np.full(len(self._tracks), -1, np.int64)     # old slot -> slot, missed only
        instance_slot = np.full(n + 1, -1, np.int64)            # instance 1..n -> slot
        for slot, t in enumerate(self._tracks):
            t.age += 1
            i = int(match[slot])
            if i >= 0:
                self._seen(t, i, instances, cent, emb, has_emb)
                t.hits += 1
                t.confirmed |= t.hits >= p.min_hits
                instance_slot[i + 1] = len(alive)
            else:
                t.instance, t.missed, t.hits = 0, t.missed + 1, 0
                if t.missed > p.max_missed:
                    if p.reidentifies and t.embedding_sum is not None:
                        self._ended.append(_Ended(t, stamp_s, self._frame))
                    continue
                new_slot[slot] = len(alive)
            alive.append(t)
        matched = np.zeros(n, bool)
        matched[match[match >= 0]] = True
        unmatched = np.nonzero(~matched)[0]
        back = self._reidentify(instances.class_ids, unmatched, emb, has_emb, cent)
        for i in unmatched:                        # back or new tracks, in instance order
            e = back.get(int(i))
            if e is not None:                      # the same object: its track goes on
                # (its age counts the frames it was gone, its hits start
                # again at 1, and a track published before is published at
                # once: it is the object the consumers already know)
                t = e.state
                t.age += self._frame - e.frame
                self._seen(t, int(i), instances, cent, emb, has_emb)
                t.hits = 1
                t.confirmed |= t.hits >= p.min_hits
                self._ended.remove(e)
            else:
                t = _State(self._next_id, int(instances.class_ids[i]), int(i) + 1, 0, 0, 1,
                           tuple(int(v) for v in instances.boxes[i]),  # type: ignore[arg-type]
                           p.min_hits <= 1, cent[i])
                if has_emb[i]:
                    t.embedding_sum = emb[i].copy()
                self._next_id += 1
            instance_slot[i + 1] = len(alive)
            alive.append(t)
        # ordered by id (a re-identified track's id is older than the new ones')
        order = np.argsort(np.array([t.id for t in alive], np.int64), kind="stable")
        rank = np.empty(len(alive) + 1, np.int64)
        rank[order] = np.arange(len(alive))
        rank[-1] = -1                                           # slot -1 stays -1
        self._remember(index, rank[instance_slot], rank[new_slot])
        self._tracks = [alive[k] for k in order]
        return [t.frozen() for t in self._tracks]

    @staticmethod
    def _seen(t: _State, i: int, instances: Instances, cent: np.ndarray, emb: np.ndarray,
              has_emb: np.ndarray) -> None:
        """Track ``t`` continues instance ``i`` (0-based) this frame."""
        t.instance, t.missed = i + 1, 0
        t.box = tuple(int(v) for v in instances.boxes[i])  # type: ignore[assignment]
        t.centroid = cent[i]
        if has_emb[i]:
            t.embedding_sum = emb[i].copy() if t.embedding_sum is None else t.embedding_sum + emb[i]

    def _embeddings(self, embeddings: object | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The instances' unit embeddings (n, c) float64 and which rows are
        usable (n,) bool; (n, 0) and none without. A change of width (another
        model) forgets the tracks' embeddings and the ended tracks."""
        if embeddings is None:
            return np.zeros((n, 0)), np.zeros(n, bool)
        if hasattr(embeddings, "detach"):                       # torch, on any device
            embeddings = embeddings.detach().float().cpu().numpy()  # type: ignore[attr-defined]
        e = np.asarray(embeddings, np.float64)
        if e.ndim != 2 or e.shape[0] != n:
            raise ValueError(f"embeddings must be (instances, c) = ({n}, c), not {e.shape}")
        if e.shape[1] != self._width:
            if self._width is not None:
                for t in self._tracks:
                    t.embedding_sum = None
                self._ended = []
            self._width = int(e.shape[1])
        norm = np.linalg.norm(e, axis=1)                        # (n,) NaN for non-finite
        ok = np.isfinite(norm) & (norm > 0.0)
        e = np.where(ok[:, None], e / np.where(ok, norm, 1.0)[:, None], 0.0)
        return e, ok

    def _reidentify(self, class_ids: np.ndarray, unmatched: np.ndarray, emb: np.ndarray,
                    has_emb: np.ndarray, cent: np.ndarray) -> dict[int, _Ended]:
        """Which of the ``unmatched`` instances (0-based) take an ended
        track's id back: instance -> ended track. Admissible pairs: same
        class, both with an embedding, cosine >= reid_min_cosine, and where
        both have a 3D centroid at most max_distance_m apart. Per class, one
        to one: the most pairs, then the largest summed cosine (one
        linear_sum_assignment over the cosines, inadmissible pairs costing
        more than any number of cosines can win)."""
        cand = unmatched[has_emb[unmatched]]
        if not self._ended or cand.size == 0:
            return {}
        ended = self._ended
        sums = np.stack([e.state.embedding_sum for e in ended])            # (E, c)
        norm = np.linalg.norm(sums, axis=1)                                 # (E,) 0: none
        cos = (sums / np.where(norm > 0.0, norm, 1.0)[:, None]) @ emb[cand].T   # (E, U)
        track_cent = np.stack([e.state.centroid for e in ended])           # (E, 3)
        dist = np.linalg.norm(track_cent[:, None, :] - cent[cand][None], axis=2)
        with np.errstate(invalid="ignore"):                                  # NaN: no gate
            ok = (cos >= self.params.reid_min_cosine) & ~(dist > self.params.max_distance_m)
        ok &= (norm > 0.0)[:, None]
        track_cls = np.array([e.state.class_id for e in ended], np.int64)
        inst_cls = np.asarray(class_ids)[cand]
        ok &= track_cls[:, None] == inst_cls[None, :]
        back: dict[int, _Ended] = {}
        for c in np.unique(track_cls[ok.any(axis=1)]):                      # per class
            rows = np.nonzero(track_cls == c)[0]
            cols = np.nonzero(inst_cls == c)[0]
            sub_ok = ok[np.ix_(rows, cols)]
            penalty = -(2.0 * min(sub_ok.shape) + 1.0)   # one pair fewer never pays
            score = np.where(sub_ok, cos[np.ix_(rows, cols)], penalty)
            r, q = linear_sum_assignment(score, maximize=True)
            keep = sub_ok[r, q]
            for e_row, u_col in zip(rows[r[keep]], cols[q[keep]]):
                back[int(cand[u_col])] = ended[int(e_row)]
        return back

    def _associate(self, instances: Instances) -> np.ndarray:
        """(T,) the instance (0-based) each live track continues, -1 for none."""
        t_count, n = len(self._tracks), instances.count
        match = np.full(t_count, -1, np.int64)
        if t_count == 0 or n == 0:
            return match
        cur = instances.index.ravel()[self._pixels].astype(np.int64)   # (M,) 0..n
        inter = np.bincount(self._slots * (n + 1) + cur, minlength=t_count * (n + 1))
        inter = inter.reshape(t_count, n + 1)[:, 1:]                   # (T, n)
        area = np.bincount(self._slots, minlength=t_count)             # (T,)
        union = area[:, None] + instances.pixel_counts[None, :] - inter
        iou = inter / np.maximum(union, 1)                              # (T, n)
        track_cent = np.stack([t.centroid for t in self._tracks])      # (T, 3)
        dist = np.linalg.norm(track_cent[:, None, :] - _centroids(instances)[None], axis=2)
        with np.errstate(invalid="ignore"):
            iou[dist > self.params.max_distance_m] = 0.0                # NaN (no depth): no gate
        track_cls = np.array([t.class_id for t in self._tracks], np.int64)
        inst_cls = instances.class_ids
        for c in np.intersect1d(track_cls, inst_cls):   # one assignment per class
            rows = np.nonzero(track_cls == c)[0]
            cols = np.nonzero(inst_cls == c)[0]
            sub = iou[np.ix_(rows, cols)]
            r, q = linear_sum_assignment(sub, maximize=True)
            ok = (sub[r, q] >= self.params.min_iou) & (sub[r, q] > 0.0)
            match[rows[r[ok]]] = cols[q[ok]]
        return match

    def _remember(self, index: np.ndarray, instance_slot: np.ndarray, new_slot: np.ndarray
                  ) -> None:
        """The masks the next frame is compared with: seen tracks' instances
        of this frame, missed tracks' older masks."""
        flat = np.flatnonzero(index > 0)                       # (F,)
        cur_slot = instance_slot[index.ravel()[flat]]          # (F,) every instance is a track
        old = new_slot[self._slots]                            # (M,) -1: seen or dropped
        keep = old >= 0
        self._pixels = np.concatenate([flat, self._pixels[keep]])
        self._slots = np.concatenate([cur_slot, old[keep]])


def _centroids(instances: Instances) -> np.ndarray:
    """(n, 3) each instance's 3D centroid; NaN without valid depth."""
    n = instances.count
    g = instances.geometry
    if g is None:
        return np.full((n, 3), np.nan)
    c = np.array(g.centroid[1:n + 1], np.float64)
    c[g.counts[1:n + 1] == 0] = np.nan
    return c


def instance_track_ids(count: int, tracks: list[Track], published_only: bool = True
                       ) -> np.ndarray:
    """(count + 1,) int64 the track id of each instance 0..count (0: none,
    and for instances whose track is not published when ``published_only``)."""
    ids = np.zeros(int(count) + 1, np.int64)
    for t in tracks:
        if t.instance and (t.published or not published_only):
            ids[t.instance] = t.id
    return ids


__all__ = ["TrackParams", "Track", "Tracker", "instance_track_ids"]
