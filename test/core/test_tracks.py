"""Tracks (docs/algorithm.md 11) on synthetic sequences of moving blobs:
stable ids while blobs move, two blobs of one class passing each other,
an object hidden for a while, the restarts (prompt, size, stamp back, gap),
min_hits, ids that never repeat, the depth gate, one assignment per class,
and the per-source registry (core.temporal.TemporalStreams)."""

from __future__ import annotations

import numpy as np
import pytest

from cass_ros.core.config import ConfigError
from cass_ros.core.depth import Intrinsics
from cass_ros.core.objects.instances import InstanceParams, Instances, find_instances
from cass_ros.core.objects.tracks import Track, TrackParams, Tracker, instance_track_ids
from cass_ros.core.temporal import TemporalStreams

H, W = 60, 100
DT = 0.1
YY, XX = np.mgrid[:H, :W]


def frame(blobs: list[tuple[int, float, float, float]], size: tuple[int, int] = (H, W)
          ) -> Instances:
    """Instances of discs (class, row, column, radius) drawn in order."""
    labels = np.zeros(size, np.uint8)
    yy, xx = np.mgrid[:size[0], :size[1]]
    for c, y, x, r in blobs:
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = c
    return find_instances(labels, InstanceParams(min_pixels=1))


def id_at(inst: Instances, tracks: list[Track], y: float, x: float) -> int:
    """The track id of the instance under pixel (y, x); 0 for none."""
    return int(instance_track_ids(inst.count, tracks, published_only=False)
               [inst.index[int(round(y)), int(round(x))]])


def test_ids_stay_while_blobs_move() -> None:
    tracker = Tracker()
    seen = []
    for t in range(25):
        blobs = [(1, 15 + 0.5 * t, 10 + 2 * t, 6), (2, 45, 90 - 2 * t, 7),
                 (1, 50, 5 + t, 5)]
        inst = frame(blobs)
        tracks = tracker.update(inst, 1, t * DT)
        assert len(tracks) == 3 and all(tr.published and tr.missed == 0 for tr in tracks)
        seen.append([id_at(inst, tracks, y, x) for _, y, x, _ in blobs])
        assert [tr.age for tr in tracks] == [t] * 3
        assert [tr.hits for tr in tracks] == [t + 1] * 3
    assert all(ids == seen[0] for ids in seen) and sorted(seen[0]) == [1, 2, 3]
    assert tracker.resets == 0


def test_two_blobs_of_one_class_passing_keep_their_ids() -> None:
    """Both class 1, moving towards each other on rows 16 px apart (never
    touching): their x coordinates cross, the overlap with their own last
    masks keeps the ids."""
    tracker = Tracker(TrackParams(min_iou=0.2))
    first = None
    for t in range(30):
        a = (1, 22, 8 + 3 * t, 6)
        b = (1, 38, 92 - 3 * t, 6)
        inst = frame([a, b])
        assert inst.count == 2
        tracks = tracker.update(inst, 1, t * DT)
        ids = (id_at(inst, tracks, a[1], a[2]), id_at(inst, tracks, b[1], b[2]))
        first = first or ids
        assert ids == first and len(tracks) == 2
    assert first == (1, 2)


@pytest.mark.parametrize("hidden, same", [(1, True), (3, True), (4, False), (6, False)])
def test_a_hidden_object_gets_its_id_back_within_max_missed(hidden: int, same: bool) -> None:
    tracker = Tracker(TrackParams(max_missed=3))
    other = (2, 45, 80, 6)
    obj = (1, 20, 30, 8)
    t = 0
    for _ in range(3):
        tracker.update(frame([obj, other]), 1, t * DT)
        t += 1
    obj_id = id_at(frame([obj, other]), tracker.update(frame([obj, other]), 1, t * DT), 20, 30)
    t += 1
    for k in range(hidden):
        tracks = tracker.update(frame([other]), 1, t * DT)
        t += 1
        lost = [tr for tr in tracks if tr.id == obj_id]
        if k < 3:
            # still a track: missed, unpublished, its last box kept
            assert lost and lost[0].missed == k + 1 and lost[0].instance == 0
            assert not lost[0].published and lost[0].hits == 0
            assert lost[0].box == (22, 12, 17, 17)
        else:
            assert not lost
    inst = frame([obj, other])
    tracks = tracker.update(inst, 1, t * DT)
    back = id_at(inst, tracks, 20, 30)
    assert (back == obj_id) == same
    if not same:
        assert back > obj_id and back == max(tr.id for tr in tracks)
    assert all(tr.published for tr in tracks)


@pytest.mark.parametrize("change", ["prompt", "stamp_back", "gap", "size"])
def test_restarts_drop_the_tracks_and_ids_go_on(change: str) -> None:
    tracker = Tracker(TrackParams(reset_gap_s=0.5))
    blobs = [(1, 20, 30, 8), (2, 40, 70, 8)]
    for t in range(4):
        tracks = tracker.update(frame(blobs), 3, 10.0 + t * DT)
    assert [tr.id for tr in tracks] == [1, 2]
    prompt, stamp, size = 3, 10.0 + 4 * DT, (H, W)
    if change == "prompt":
        prompt = 4
    elif change == "stamp_back":
        stamp = 10.0
    elif change == "gap":
        stamp = 10.0 + 3 * DT + 0.51
    else:
        size = (H + 2, W)
    tracks = tracker.update(frame(blobs, size), prompt, stamp)
    assert tracker.resets == 1
    assert [tr.id for tr in tracks] == [3, 4] and all(tr.age == 0 for tr in tracks)
    # a gap of exactly reset_gap_s continues
    tracks = tracker.update(frame(blobs, size), prompt, stamp + 0.5)
    assert tracker.resets == 1 and [tr.id for tr in tracks] == [3, 4]


def test_reset_and_set_params() -> None:
    tracker = Tracker()
    blobs = [(1, 20, 30, 8)]
    tracker.update(frame(blobs), 1, 0.0)
    tracker.set_params(TrackParams(min_iou=0.5))      # tracks kept
    assert [tr.id for tr in tracker.update(frame(blobs), 1, DT)] == [1]
    tracker.reset()                                    # forgotten, ids go on
    assert [tr.id for tr in tracker.update(frame(blobs), 1, 2 * DT)] == [2]
    assert tracker.resets == 0 and tracker.next_id == 3


def test_min_hits_delays_publication() -> None:
    tracker = Tracker(TrackParams(min_hits=3, max_missed=2))
    obj = (1, 20, 30, 8)
    published = []
    for t in range(5):
        published.append(tracker.update(frame([obj]), 1, t * DT)[0].published)
    assert published == [False, False, True, True, True]
    # a confirmed track found again after a miss is published at once
    assert not tracker.update(frame([]), 1, 5 * DT)[0].published
    again = tracker.update(frame([obj]), 1, 6 * DT)
    assert again[0].published and again[0].hits == 1 and again[0].id == 1
    # a new one waits again; published_only leaves it out of the id map
    inst = frame([obj, (2, 45, 80, 6)])
    tracks = tracker.update(inst, 1, 7 * DT)
    assert [tr.published for tr in tracks] == [True, False]
    assert instance_track_ids(inst.count, tracks).tolist() == [0, 1, 0]


def test_ids_never_repeat_and_always_increase() -> None:
    rng = np.random.default_rng(3)
    tracker = Tracker(TrackParams(max_missed=1))
    given: dict[int, int] = {}
    top = 0
    for t in range(60):
        blobs = [(int(c), float(y), float(x), 5.0)
                 for c, y, x in zip(rng.integers(1, 4, 4), rng.integers(8, 52, 4),
                                    rng.integers(8, 92, 4)) if rng.random() < 0.7]
        prompt = 1 + t // 20                        # two restarts on the way
        tracks = tracker.update(frame(blobs), prompt, t * DT)
        ids = [tr.id for tr in tracks]
        assert ids == sorted(set(ids))
        for tr in tracks:
            if tr.id not in given:
                assert tr.id == top + 1 and tr.age == 0      # a new id: the next one
                given[tr.id] = tr.class_id
                top = tr.id
            assert given[tr.id] == tr.class_id               # a track keeps its class
    assert tracker.resets == 2 and top == tracker.next_id - 1


def test_the_class_separates_tracks() -> None:
    tracker = Tracker()
    tracker.update(frame([(1, 20, 30, 8)]), 1, 0.0)
    tracks = tracker.update(frame([(2, 20, 30, 8)]), 1, DT)
    assert [(tr.id, tr.class_id, tr.missed) for tr in tracks] == [(1, 1, 1), (2, 2, 0)]


def test_one_instance_continues_one_track() -> None:
    """Two tracks, one instance over both old masks: the better overlap
    wins, the other track is missed (one-to-one assignment)."""
    tracker = Tracker(TrackParams(min_iou=0.1))
    tracker.update(frame([(1, 20, 30, 6), (1, 20, 46, 6)]), 1, 0.0)
    tracks = tracker.update(frame([(1, 20, 33, 10)]), 1, DT)
    assert [(tr.id, tr.missed) for tr in tracks] == [(1, 0), (2, 1)]


def test_min_iou_rejects_small_overlaps() -> None:
    tracker = Tracker(TrackParams(min_iou=0.5))
    tracker.update(frame([(1, 20, 30, 8)]), 1, 0.0)
    tracks = tracker.update(frame([(1, 20, 38, 8)]), 1, DT)     # IoU about 0.23
    assert [tr.id for tr in tracks if tr.missed == 0] == [2]


def test_depth_gate() -> None:
    """Same mask, the centroid 2 m farther: not a continuation with
    max_distance_m 1, a continuation with 3; without valid depth no gate."""
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 20:40] = 1
    k = Intrinsics(50.0, 50.0, W / 2, H / 2)
    near = np.full((H, W), 2.0)
    far = np.full((H, W), 4.0)
    none = np.zeros((H, W))
    p = InstanceParams(min_pixels=1)
    for max_d, depth2, same in ((1.0, far, False), (3.0, far, True), (1.0, near, True),
                                (1.0, none, True)):
        tracker = Tracker(TrackParams(max_distance_m=max_d))
        tracker.update(find_instances(labels, p, None, near, k), 1, 0.0)
        tracks = tracker.update(find_instances(labels, p, None, depth2, k), 1, DT)
        assert (tracks[-1].id == 1) == same, (max_d, same)


def test_parameters_are_checked_by_name() -> None:
    for params, name in ((TrackParams(min_iou=1.5), "track_min_iou"),
                         (TrackParams(max_missed=-1), "track_max_missed"),
                         (TrackParams(min_hits=0), "track_min_hits"),
                         (TrackParams(max_distance_m=0.0), "track_max_distance_m"),
                         (TrackParams(reset_gap_s=0.0), "temporal_reset_gap_s")):
        with pytest.raises(ConfigError, match=f"'{name}'"):
            params.validate()
    with pytest.raises(ConfigError):
        Tracker(TrackParams(min_hits=True))   # a bool is not a count


def test_registry_keeps_one_tracker_per_source_and_ids_across_drops() -> None:
    streams = TemporalStreams()
    a = streams.tracker("cam0", TrackParams())
    assert streams.tracker("cam0", TrackParams()) is a
    b = streams.tracker("cam1", TrackParams())
    assert b is not a
    streams.tracker("cam0", TrackParams(min_iou=0.6))
    assert a.params.min_iou == 0.6
    blobs = [(1, 20, 30, 8), (2, 40, 70, 8)]
    assert [tr.id for tr in a.update(frame(blobs), 1, 0.0)] == [1, 2]
    assert [tr.id for tr in b.update(frame(blobs), 1, 0.0)] == [1, 2]   # per camera
    streams.drop_trackers()
    c = streams.tracker("cam0", TrackParams())
    assert c is not a and [tr.id for tr in c.update(frame(blobs), 1, 1.0)] == [3, 4]
    # the temporal streams being off does not drop the trackers
    from cass_ros.core.temporal import TemporalParams
    assert streams.frames(["cam0"], [1.0], TemporalParams(), 1) is None
    assert streams.tracker("cam0", TrackParams()) is c
