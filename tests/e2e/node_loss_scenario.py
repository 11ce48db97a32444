"""Run by test_node_loss.py in its own process: a 3-node cluster on one machine loses a node.

Prints one JSON line with what happened. Kept out of pytest's process because
that process already holds the session-wide Ray.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time

import ray
from ray.cluster_utils import Cluster

from hive_ray import Agent, Hive
from hive_ray._client import _ensure_token_auth


class Napper(Agent):
    agent_type = "napper-node-loss"
    concurrent = True
    max_concurrency = 20

    async def handle(self, task):
        await asyncio.sleep(task.payload)
        return ray.get_runtime_context().get_node_id()


def main() -> None:
    # Token authentication on every node from the start, as `hive up` and ray-cluster.yaml do.
    # Without it the survivor, added after Hive.connect turned token mode on in this process,
    # demands a token the head's GCS never sends: it takes no actor, and the restarts wait.
    _ensure_token_auth()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        doomed = cluster.add_node(num_cpus=1, resources={"agent_slot": 4})
        ray.init(address=cluster.address, namespace="hive", logging_level="ERROR", log_to_driver=False)
        hive = Hive.connect(settings={"journal_dir": tempfile.mkdtemp(), "state_dir": tempfile.mkdtemp()})
        hive.spawn(Napper, count=2, pool="nap", resources={"agent_slot": 1},
                   restart={"max_restarts": 10, "backoff_initial_seconds": 0.1})
        doomed_node = doomed.node_id
        before = {agent.agent_id: agent.node_id for agent in hive.agents("nap")}
        survivor = cluster.add_node(num_cpus=1, resources={"agent_slot": 4})
        cluster.wait_for_nodes()
        handles = [hive.submit(pool="nap", payload=2.0) for _ in range(20)]
        deadline = time.monotonic() + 60
        while hive.pool("nap").running < len(handles):  # remove the node while its agents work
            assert time.monotonic() < deadline, "the tasks never started"
            time.sleep(0.05)
        cluster.remove_node(doomed)
        results = [handle.result(timeout=180) for handle in handles]
        after = {agent.agent_id: agent.node_id for agent in hive.agents("nap")}
        records = [hive.task(handle.task_id) for handle in handles]
        print(json.dumps({
            "doomed_node": doomed_node,
            "survivor_node": survivor.node_id,
            "before": before,
            "after": after,
            "results_nodes": sorted(set(results)),
            "states": sorted({record.state.value for record in records}),
            "max_attempts_used": max(record.attempts for record in records),
            "redelivered": hive.statistics()["counters"]["redelivered"],
            "restart_causes": sorted({event["cause"] for event in hive.restarts("nap")}),
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
