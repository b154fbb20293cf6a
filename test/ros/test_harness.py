"""The test node (node_harness.Harness) keeps recording while the test's own
thread creates and destroys publishers and subscriptions on it, as
test_ros2_cli's frame publishers and test_node's late subscriptions do.
rclpy raises InvalidHandle in the spinning thread when an entity goes away
during a wait; before the harness retried that wait, its thread ended and
every later message was silently lost (a full run's missing class table)."""

from __future__ import annotations

import threading
import time

import pytest
from node_harness import Harness, ros_available

SKIP = ros_available()
pytestmark = pytest.mark.skipif(bool(SKIP), reason=SKIP or "")


def test_recording_survives_entities_destroyed_while_spinning(ros_domain: int) -> None:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    listener = Harness(ros_domain, "/harness_listener")
    talker = Harness(ros_domain, "/harness_talker")
    stop = threading.Event()
    try:
        listener.subscribe(String, "/harness_test/chatter")
        pub = talker.node.create_publisher(String, "/harness_test/chatter", 50)
        listener.wait_for(lambda: pub.get_subscription_count() > 0, 20.0, "discovery")

        def feed() -> None:           # traffic, so the listener is mostly in a wait
            while not stop.is_set():
                pub.publish(String(data="busy"))
                time.sleep(0.002)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for _ in range(20):
            img_pub = listener.node.create_publisher(Image, "/harness_test/image", 10)
            time.sleep(0.005)
            listener.node.destroy_publisher(img_pub)
            sub = listener.node.create_subscription(String, "/harness_test/other",
                                                    lambda _m: None, 10)
            time.sleep(0.002)
            listener.node.destroy_subscription(sub)
        stop.set()
        feeder.join()

        pub.publish(String(data="after"))
        got = listener.wait_for(
            lambda: any(m.data == "after" for m in listener.got("/harness_test/chatter")),
            20.0, "the message published after the churn")
        assert got
        assert listener.spin_error is None
    finally:
        stop.set()
        talker.close()
        listener.close()
