"""A separate client process: wait for the `ground` service, call it, print the response as JSON."""
import argparse
import json
import sys
import time

import rclpy
from rclpy.node import Node

from m3_ros.srv import GroundQuery


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--query", required=True)
    ap.add_argument("--frame", default="")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--service", default="ground")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    rclpy.init()
    node = Node("ground_client")
    cli = node.create_client(GroundQuery, a.service)
    t0 = time.monotonic()
    if not cli.wait_for_service(timeout_sec=a.timeout):
        print(json.dumps({"error": "service not found"}))
        return 2
    fut = cli.call_async(GroundQuery.Request(query=a.query, frame_id=a.frame, top_k=a.top_k))
    rclpy.spin_until_future_complete(node, fut, timeout_sec=a.timeout)
    if not fut.done():
        print(json.dumps({"error": "no response"}))
        return 3
    r = fut.result()
    print(json.dumps({
        "success": r.success, "message": r.message, "model": r.model,
        "points": [[p.point.x, p.point.y, p.point.z] for p in r.points],
        "frames": [p.header.frame_id for p in r.points], "scores": list(r.scores),
        "wait_s": time.monotonic() - t0}))
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
