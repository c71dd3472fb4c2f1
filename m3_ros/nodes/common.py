"""Small helpers shared by the thin nodes: QoS from parameters, clean main()."""
from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)


def sensor_qos(reliable: bool, depth: int = 5) -> QoSProfile:
    """BEST_EFFORT sensor QoS as a real camera driver publishes; RELIABLE when tests count."""
    if reliable:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_sensor_data


def latched_qos(depth: int = 1) -> QoSProfile:
    """RELIABLE + TRANSIENT_LOCAL: late joiners get the last message (like /tf_static)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def spin_node(make_node: Callable[[], Node], threads: int = 3, args: list[str] | None = None) -> int:
    """Run one node on a multi-threaded executor; end cleanly on Ctrl-C or external shutdown."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
