"""N concurrent `ground` clients (one node each) against a memory_node, while it trains.

Phase 1 reads memory/status for --baseline-s to get the training rate alone; phase 2 fires every
client's call at once, --rounds times, reading the training rate meanwhile. Prints one JSON line.
Used by test/nodes/test_autosave_load.py and bench/bench_offline.py.
"""
import argparse
import json
import sys
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from m3_ros.msg import MemoryStatus
from m3_ros.srv import GroundQuery


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--query", default="yellow bath duck")
    ap.add_argument("--baseline-s", type=float, default=5.0)
    ap.add_argument("--load-s", type=float, default=0.0, help="keep firing rounds until this long has passed")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()
    rclpy.init()
    nodes = [Node(f"ground_client_{i}") for i in range(a.clients)]
    # the reply topic is shared by every client: a burst of 20 answers at once must fit each reader's
    # history (the default depth of 10 can drop a client's own reply before it is taken)
    reply_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    clients = [n.create_client(GroundQuery, "ground", qos_profile=reply_qos) for n in nodes]
    status: list[tuple[float, MemoryStatus]] = []
    nodes[0].create_subscription(MemoryStatus, "memory/status", lambda m: status.append((time.monotonic(), m)), 10)
    ex = MultiThreadedExecutor(num_threads=4)
    for n in nodes:
        ex.add_node(n)
    try:
        t0 = time.monotonic()
        for c in clients:
            if not c.wait_for_service(timeout_sec=a.timeout):
                print(json.dumps({"error": "service not found"}))
                return 2
        end = time.monotonic() + a.baseline_s
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        t_load = time.monotonic()
        results, waits = [], []
        n_rounds = 0
        while n_rounds < a.rounds or time.monotonic() - t_load < a.load_s:
            n_rounds += 1
            sent = time.monotonic()
            futs = [c.call_async(GroundQuery.Request(query=a.query, top_k=1)) for c in clients]
            deadline = sent + a.timeout
            while not all(f.done() for f in futs) and time.monotonic() < deadline:
                ex.spin_once(timeout_sec=0.05)
            done_t = time.monotonic()
            for f in futs:
                if f.done():
                    r = f.result()
                    results.append({"success": r.success, "message": r.message, "n_points": len(r.points)})
            waits.append(done_t - sent)
        t_end = time.monotonic()

        def rate(t_a, t_b):
            r = [m.train_rate_hz for t, m in status if t_a < t <= t_b]
            return sum(r) / len(r) if r else None

        def iteration(t_b):
            r = [m.train_iteration for t, m in status if t <= t_b]
            return r[-1] if r else None
        during = [m.train_iteration for t, m in status if t_load < t <= t_end]
        # each status's rate against the steps since the status before it, [(rate x dt, steps)]
        rate_vs_steps = [(round(b.train_rate_hz * (tb - ta), 2), b.train_iteration - a.train_iteration)
                         for (ta, a), (tb, b) in zip(status, status[1:]) if a.train_iteration > 0]
        print(json.dumps({
            "sent": a.clients * n_rounds, "answered": len(results),
            "succeeded": sum(r["success"] for r in results),
            "messages": sorted({r["message"][:80] for r in results if not r["success"]}),
            "round_s": waits, "baseline_rate_hz": rate(t_load - a.baseline_s, t_load),
            "load_rate_hz": rate(t_load, t_end + 0.01), "iteration_before": iteration(t_load),
            "iteration_after": iteration(t_end + 1e9), "setup_s": t_load - t0,
            # statuses received while the load ran: training must advance between them
            "iterations_during": during, "rate_vs_steps": rate_vs_steps,
            "status_publishers": nodes[0].count_publishers("memory/status"),
            "ground_servers": nodes[0].count_services("ground")}))
        return 0
    finally:
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
