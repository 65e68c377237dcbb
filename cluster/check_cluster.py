"""Check that a Ray job really spreads work over the cluster's nodes (no training involved).

    srgan-dist submit --entrypoint "python cluster/check_cluster.py --nodes 2" --wait
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python cluster/check_cluster.py

Joins the cluster the job runs on (``address="auto"``), reserves one CPU on each of ``--nodes``
different nodes with a STRICT_SPREAD placement group, runs a task in every bundle and prints one
``CHECK_CLUSTER {json}`` line: the alive nodes, the node of each task, and the interpreters used.
Exits 1 when the tasks did not land on ``--nodes`` different nodes.
"""

from __future__ import annotations

import argparse
import json
import sys

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@ray.remote(num_cpus=1)
def where() -> dict[str, str]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "python": sys.executable}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2, help="different nodes to run on (default 2)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the placement group")
    args = parser.parse_args()

    ray.init(address="auto")
    alive = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    group = placement_group([{"CPU": 1}] * args.nodes, strategy="STRICT_SPREAD")
    try:
        ray.get(group.ready(), timeout=args.timeout)
        tasks = [
            where.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=index
                )
            ).remote()
            for index in range(args.nodes)
        ]
        placed = ray.get(tasks)
    finally:
        remove_placement_group(group)
    report = {
        "alive_nodes": alive,
        "task_nodes": [p["node_id"] for p in placed],
        "task_pythons": sorted({p["python"] for p in placed}),
        "driver_node": ray.get_runtime_context().get_node_id(),
        "driver_python": sys.executable,
    }
    print("CHECK_CLUSTER " + json.dumps(report), flush=True)
    used = len(set(report["task_nodes"]))
    if used != args.nodes:
        print(f"expected tasks on {args.nodes} different nodes, got {used}", file=sys.stderr)
        return 1
    print(f"OK: tasks ran on {used} different nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
