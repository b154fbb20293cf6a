"""/cass/query and /cass/describe over real DDS (docs/ros-interface.md,
"Queries"): cass_node in-process with the tiny random model. A query on
the newest frame gives the labels a node started with those prompts gives
on the same frame; the topics keep their class table and prompt_id; bad
requests get one line and the node goes on; the text cache stays bounded
under 500 distinct queries; describe ranks as numpy does on the kept
features, and says so while its vocabulary is still encoding."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import CONFIG, Harness, image_msg, ros_available, stamp_ns, unique_namespace

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 48, 64
QUESTION = "red box|crimson block, green ball"


def _frame() -> np.ndarray:
    small = np.random.default_rng(21).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 4, W // 4, 1), np.uint8))


def _args(tiny_weights: tuple[str, str], prompts: str, topics: str = '["front/image_raw"]'
          ) -> list[str]:
    clip, dino = tiny_weights
    return ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48", "-p", "prob_threshold:=0.0",
            "-p", f"prompts:={prompts}", "-p", 'background_classes:=["sky"]',
            "-p", f"image_topics:={topics}"]


@pytest.fixture(scope="module")
def live(ros_domain: int, tiny_weights: tuple[str, str]) -> Any:
    from sensor_msgs.msg import Image

    from cass_ros.msg import ClassTable, ObjectPresenceArray
    from cass_ros.ros.wiring.node import CassNode
    from cass_ros.srv import Describe, Query

    ns = unique_namespace("cass_query")
    h = Harness(ros_domain, ns)
    node = CassNode(cli_args=_args(tiny_weights, '["car", "person"]'), context=h.context,
                    namespace=ns)
    h.executor.add_node(node)
    h.subscribe(Image, "cass/front/segmentation")
    h.subscribe(ObjectPresenceArray, "cass/front/objects")
    h.subscribe(ClassTable, "cass/classes", h.latched_qos())
    pub = h.node.create_publisher(Image, "front/image_raw", 10)
    h.wait_subscribers(pub)
    query = h.node.create_client(Query, "cass/query")
    describe = h.node.create_client(Describe, "cass/describe")
    assert query.wait_for_service(20) and describe.wait_for_service(20)
    yield SimpleNamespace(h=h, node=node, pub=pub, query=query, describe=describe,
                          ns=ns, weights=tiny_weights, stamp=[3_000_000_000])
    node.destroy_node()
    h.close()


def _call(live: Any, client: Any, **fields: Any) -> Any:
    request = client.srv_type.Request(**fields)
    future = client.call_async(request)
    return live.h.wait_for(lambda: future.result() if future.done() else None, 60,
                           f"the answer of {client.srv_name}")


def _send(live: Any, pub: Any = None, key: str = "cass/front/segmentation") -> Any:
    live.stamp[0] += 100_000_000
    stamp = live.stamp[0]
    (pub or live.pub).publish(image_msg(_frame(), stamp, "front_optical"))
    return live.h.wait_message(key, lambda m: stamp_ns(m.header) == stamp, 60)


def test_query_labels_equal_a_node_started_with_those_prompts(live: Any) -> None:
    from cass_ros.ros.outputs.messages import labels_from_msg
    from cass_ros.ros.wiring.node import CassNode

    labels_msg = _send(live)
    live.h.wait_message("cass/classes")       # the latched table, before counting
    classes_before = len(live.h.got("cass/classes"))
    answer = _call(live, live.query, prompts=QUESTION, return_labels=True)
    assert answer.success, answer.error
    assert stamp_ns(answer.header) == stamp_ns(labels_msg.header)
    assert list(answer.class_names) == ["background", "red box", "green ball"]
    assert [o.label for o in answer.objects] == ["red box", "green ball"]
    queried = labels_from_msg(answer.labels)
    assert sum(o.pixel_count for o in answer.objects) == int((queried > 0).sum())

    # a second node, started with the question as its prompts, on the same frame
    ns = unique_namespace("cass_query_b")
    other = CassNode(cli_args=_args(live.weights, f'["{QUESTION.split(", ")[0]}", '
                                                  f'"{QUESTION.split(", ")[1]}"]'),
                     context=live.h.context, namespace=ns)
    live.h.executor.add_node(other)
    try:
        from sensor_msgs.msg import Image

        key = f"{ns}/cass/front/segmentation"
        live.h.subscribe(Image, key)
        pub = live.h.node.create_publisher(Image, f"{ns}/front/image_raw", 10)
        live.h.wait_subscribers(pub)
        theirs = labels_from_msg(_send(live, pub, key))
    finally:
        live.h.executor.remove_node(other)
        other.destroy_node()
    np.testing.assert_array_equal(queried, theirs)
    # the node's own outputs did not move: no new class table, same prompt_id
    assert len(live.h.got("cass/classes")) == classes_before
    objects = live.h.wait_message("cass/front/objects",
                                  lambda m: stamp_ns(m.header) == live.stamp[0] - 100_000_000)
    after = _send(live)
    assert after is not None
    latest = live.h.wait_message("cass/front/objects",
                                 lambda m: stamp_ns(m.header) == live.stamp[0])
    assert latest.prompt_id == objects.prompt_id and list(latest.class_names) == [
        "background", "car", "person"]


def test_query_background_and_no_labels(live: Any) -> None:
    _send(live)
    answer = _call(live, live.query, prompts="door", set_background=True,
                   background_classes=["floor", "wall"])
    assert answer.success and list(answer.class_names) == ["background", "door"]
    assert answer.labels.height == 0 and len(answer.labels.data) == 0
    none = _call(live, live.query, prompts="door", set_background=True)
    assert none.success and none.class_names[0] == "background"


def test_bad_requests_get_one_line_and_the_node_goes_on(live: Any) -> None:
    _send(live)
    cases = {"unknown camera": dict(camera="rear", prompts="car"),
             "empty prompts": dict(prompts="  "),
             "no class names": dict(prompts=" | ; , "),
             "control characters": dict(prompts="car\x07bell")}
    for what, fields in cases.items():
        answer = _call(live, live.query, **fields)
        assert not answer.success, what
        assert answer.error and "\n" not in answer.error, what
    assert "no camera 'rear': the cameras are front" in _call(
        live, live.query, camera="rear", prompts="car").error
    assert _call(live, live.query, prompts="car").success      # still alive


def test_no_frame_yet_and_several_cameras(live: Any) -> None:
    from cass_ros.ros.wiring.node import CassNode
    from cass_ros.srv import Query

    ns = unique_namespace("cass_query_two")
    node = CassNode(cli_args=_args(live.weights, '["car"]', '["front/image_raw", "rear/image_raw"]'),
                    context=live.h.context, namespace=ns)
    live.h.executor.add_node(node)
    try:
        client = live.h.node.create_client(Query, f"{ns}/cass/query")
        assert client.wait_for_service(20)
        answer = _call(live, client, prompts="car")
        assert not answer.success and answer.error == "name the camera: one of front, rear"
        answer = _call(live, client, camera="rear", prompts="car")
        assert answer.error == "no frame of camera 'rear' has been segmented yet"
    finally:
        live.h.executor.remove_node(node)
        node.destroy_node()


def test_text_cache_stays_bounded_under_500_distinct_queries(live: Any) -> None:
    _send(live)
    embedder = live.node._in_force.segmenter.text_embedder
    bound = embedder.max_names
    embedder.max_names = 40
    try:
        for i in range(500):
            answer = _call(live, live.query, prompts=f"question number {i}")
            assert answer.success, answer.error
            assert len(embedder.cached_names) <= 40
    finally:
        embedder.max_names = bound
    assert _send(live) is not None      # frames go on


def test_describe_ranks_as_numpy_on_the_kept_features(live: Any) -> None:
    from cass_ros.core.queries.describe import name_labels

    _send(live)
    entries = ["car|automobile", "tree", "sky", "road", "person"]
    answer = _call(live, live.describe, names=entries, top_k=3)
    assert answer.success, answer.error
    kept = live.node._queries.frames.newest(0)
    assert stamp_ns(answer.header) == stamp_ns(kept.header)
    parsed = [tuple(e.split("|")) for e in entries]
    names, labels = name_labels(parsed)
    text = live.node._in_force.segmenter.text_embedder.encode(names).double().numpy()
    g = np.stack([grp.g[j].double().numpy() for grp in kept.features.groups
                  for j in range(len(grp.images))])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    r = (g @ text.T).max(0)
    p = np.exp(100 * (r - r.max()))
    p /= p.sum()
    per = np.array([max(p[i] for i, lab in enumerate(labels) if lab == k)
                    for k in range(len(parsed))])
    order = np.argsort(-per, kind="stable")[:3]
    assert list(answer.names) == [parsed[k][0] for k in order]
    np.testing.assert_allclose(answer.presence, per[order], atol=1e-5)
    assert answer.encoded == answer.total == len(names)


def test_describe_says_still_encoding_then_answers(live: Any) -> None:
    _send(live)
    embedder = live.node._in_force.segmenter.text_embedder
    with embedder._lock:            # the text tower is busy: the encoding cannot progress
        first = _call(live, live.describe, top_k=5)
    assert not first.success
    assert first.error == (f"still encoding the vocabulary (0 of {first.total} names); "
                           "ask again")
    assert first.total > 200 and first.encoded == 0
    answer = live.h.wait_for(lambda: (lambda a: a if a.success else None)(
        _call(live, live.describe, top_k=5)), 120, "the vocabulary", poll=0.5)
    assert len(answer.names) == 5 and answer.encoded == answer.total == first.total
    assert all(a >= b for a, b in zip(answer.presence, answer.presence[1:]))
