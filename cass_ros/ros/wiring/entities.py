"""The ROS entities one lifecycle step creates, so that its inverse destroys
exactly those (docs/ros-interface.md, "Managed node"): configure's are
removed by cleanup, activate's by deactivate, also what other parts
(wiring.depth, outputs.mappers, services.query) add during the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rclpy.node import Node

# Node's entity lists and how each kind is destroyed.
ENTITY_KINDS = (("publishers", "destroy_publisher"), ("subscriptions", "destroy_subscription"),
                ("timers", "destroy_timer"), ("clients", "destroy_client"),
                ("services", "destroy_service"))

Entities = list[tuple[str, Any]]    # (destroy method name, entity)


@contextlib.contextmanager
def created(node: Node, into: Entities) -> Iterator[None]:
    """Collect every ROS entity the block creates on ``node`` into ``into``."""
    before = {id(e) for kind, _ in ENTITY_KINDS for e in getattr(node, kind)}
    try:
        yield
    finally:
        into.extend((destroy, e) for kind, destroy in ENTITY_KINDS
                    for e in list(getattr(node, kind)) if id(e) not in before)


def destroy(node: Node, entities: Entities) -> None:
    """Destroy what ``created`` collected, newest first, and forget it."""
    for name, entity in reversed(entities):
        getattr(node, name)(entity)
    entities.clear()


__all__ = ["ENTITY_KINDS", "Entities", "created", "destroy"]
