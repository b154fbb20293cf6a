"""The per-camera rules of docs/ros-interface.md ("Always the newest frame",
"No prompts at start-up") on cass_ros.ros.inputs.cameras alone: no DDS, no model."""

from __future__ import annotations

import threading

import pytest

from cass_ros.ros.inputs.cameras import STATS_WINDOW_S, Camera, CameraBoard


def test_the_newest_frame_wins_and_replaced_ones_count_as_dropped() -> None:
    cam: Camera[str] = Camera(0, "front", "/front/image_raw")
    for i, msg in enumerate("abc"):
        assert cam.offer(msg, now=10.0 + i, max_rate_hz=0.0, waiting=False)
    assert cam.pending is not None and cam.pending.msg == "c"
    assert cam.pending.received == 12.0
    assert (cam.received, cam.dropped, cam.waiting, cam.throttled) == (3, 2, 0, 0)


def test_max_rate_skips_frames_that_come_too_soon() -> None:
    cam: Camera[str] = Camera(0, "front", "/front/image_raw")
    assert cam.offer("a", 0.0, max_rate_hz=2.0, waiting=False)
    assert not cam.offer("b", 0.3, max_rate_hz=2.0, waiting=False)      # < 0.5 s later
    assert cam.offer("c", 0.6, max_rate_hz=2.0, waiting=False)
    assert (cam.received, cam.throttled, cam.dropped) == (3, 1, 1)
    assert cam.pending.msg == "c"


def test_frames_while_waiting_count_as_waiting_and_the_newest_is_kept() -> None:
    cam: Camera[str] = Camera(0, "front", "/front/image_raw")
    for i, msg in enumerate("abcd"):
        # throttling does not apply while nothing is segmented
        assert cam.offer(msg, 0.01 * i, max_rate_hz=1.0, waiting=True)
    assert (cam.received, cam.waiting, cam.dropped, cam.throttled) == (4, 4, 0, 0)
    assert cam.pending.msg == "d"
    # the first frame once prompts are in force is not throttled by the waiting ones
    assert cam.offer("e", 0.05, max_rate_hz=1.0, waiting=False)
    assert cam.dropped == 1 and cam.pending.msg == "e"


def test_missed_frames_from_sequence_gaps_per_publisher() -> None:
    cam: Camera[str] = Camera(0, "front", "/front/image_raw")
    a, b = {"data": b"\x01" * 24}, bytes([2] * 24)
    for seq in (1, 2, 5):                   # 3 and 4 never reached the callback
        cam.count_missed({"publication_sequence_number": seq, "publisher_gid": a})
    cam.count_missed({"publication_sequence_number": 7, "publisher_gid": b})  # first of b
    cam.count_missed({"publication_sequence_number": 4, "publisher_gid": a})  # late: no gap
    cam.count_missed({"publication_sequence_number": 9, "publisher_gid": b})
    cam.count_missed({"publication_sequence_number": 0, "publisher_gid": b})  # unknown: ignored
    assert cam.missed == 2 + 1
    assert cam.stats(0.0)["dropped_in_dds"] == 3


def test_missed_frames_without_publisher_gid() -> None:
    """Jazzy's MessageInfo carries no publisher_gid: one sequence per topic."""
    cam: Camera[str] = Camera(0, "front", "/front/image_raw")
    for seq in (3, 4, 8, 9, 12):            # 5-7 and 10-11 never reached the callback
        cam.count_missed({"publication_sequence_number": seq})
    assert cam.missed == 3 + 2


def test_stats_average_the_recent_window() -> None:
    cam: Camera[str] = Camera(0, "front", "/front/image_raw")
    assert cam.stats(100.0)["silent_s"] is None
    cam.offer("a", 100.0, 0.0, waiting=False)
    cam.done(now=100.0 - STATS_WINDOW_S - 1, received=99.0, inference_ms=500.0)  # too old
    cam.done(now=100.1, received=100.0, inference_ms=40.0)
    cam.done(now=100.3, received=100.0, inference_ms=60.0)
    s = cam.stats(100.5)
    assert s["processed"] == 3
    assert s["rate_hz"] == pytest.approx(2 / STATS_WINDOW_S)
    assert s["latency_ms"] == pytest.approx(200.0)
    assert s["inference_ms"] == pytest.approx(50.0)
    assert s["silent_s"] == pytest.approx(0.5)
    cam.dropped, cam.missed = 2, 3
    assert cam.stats(100.5)["dropped"] == 5


def test_board_hands_out_every_ready_frame_once_prompts_are_in_force() -> None:
    board: CameraBoard[str] = CameraBoard(["front", "rear"], ["/f", "/r"])
    front, rear = board.cameras
    board.offer(front, "f1", 1.0, 0.0, waiting=True)
    board.offer(rear, "r1", 1.0, 0.0, waiting=True)
    ready = threading.Event()
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(
        board.take(stop=lambda: False, ready=ready.is_set, poll_s=5.0)))
    taker.start()
    taker.join(0.3)
    assert taker.is_alive(), "took frames while waiting for prompts"
    ready.set()
    board.wake()                            # the first prompt set: no new frame needed
    taker.join(2.0)
    assert not taker.is_alive()
    (batch,) = got
    assert [(c.name, p.msg) for c, p in batch] == [("front", "f1"), ("rear", "r1")]
    assert all(c.pending is None for c in board.cameras)


def test_board_take_returns_none_on_stop() -> None:
    board: CameraBoard[str] = CameraBoard(["front"], ["/f"])
    stop = threading.Event()
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(
        board.take(stop=stop.is_set, ready=lambda: True, poll_s=5.0)))
    taker.start()
    stop.set()
    board.wake()
    taker.join(2.0)
    assert not taker.is_alive() and got == [None]
