"""Run by test_data_plane_nodes.py in its own process: a 3-node cluster on one machine.

The nodes have distinct loopback addresses (head 127.0.0.4, then 127.0.0.2 and
127.0.0.3; not 127.0.0.1 for the head, which Ray's ray.init would "canonicalize"
into the machine's network address); the third joins after the orchestrator
started. One pool is spread
over all three by a custom resource each node has exactly one of. Prints one
JSON line with what every host reported and where tasks ran. Kept out of
pytest's process because that process may already hold the session-wide Ray.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import ray
from ray.cluster_utils import Cluster

from hive_ray import Agent, Hive
from hive_ray._client import _ensure_token_auth

HEAD = "127.0.0.4"


class WhereAmI(Agent):
    agent_type = "where-am-i-data-plane"

    def handle(self, task):
        return ray.get_runtime_context().get_node_id()


def _refused_with(endpoint, token: bytes) -> str:
    """Dial a listener with the right address and pin but the wrong token."""
    from hive_ray._runtime._channel_client import ChannelClient
    from hive_ray._runtime._endpoint import Endpoint

    forged = Endpoint(endpoint.host, endpoint.port, token, endpoint.tls, endpoint.fingerprint)
    try:
        ChannelClient(forged, name="intruder").close()
    except Exception as error:  # noqa: BLE001 - what the refusal looked like, for the report
        return f"{type(error).__name__}: {error}"
    return "accepted"


def _after_the_refusal(hive: Hive) -> dict:
    """The orchestrator's data-plane statistics once it has counted the intruder's refusal:
    the intruder learns it is refused (the orchestrator's proof does not verify) and hangs up
    before the orchestrator's side of that connection has ended; give it 15 s."""
    deadline = time.monotonic() + 15
    while True:
        statistics = hive.statistics()["data_plane"]
        if sum(statistics["refused"].values()) or time.monotonic() > deadline:
            return statistics
        time.sleep(0.1)


def main() -> None:
    # Token authentication on every node from the start, as `hive up` and ray-cluster.yaml
    # do (Hive.connect would turn it on for nodes started after it, and only for those).
    _ensure_token_auth()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": HEAD, "resources": {"slot": 1}})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2", resources={"slot": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="hive", logging_level="ERROR", log_to_driver=False,
                 _node_ip_address=HEAD)
        hive = Hive.connect(settings={"journal_dir": tempfile.mkdtemp(), "state_dir": tempfile.mkdtemp()})
        hive.spawn(WhereAmI, count=2, pool="spread", resources={"slot": 1})
        late = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.3", resources={"slot": 1})
        cluster.wait_for_nodes()
        hive.scale("spread", 3)  # the third host can only go to the node that joined late
        nodes = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
        ran_on = set(hive.map(None, list(range(300)), pool="spread", progress=False))
        remote = ray.get(hive._orchestrator.client_endpoint.remote("a node that is not the head's"))
        print(json.dumps({
            "nodes": nodes,
            "late_node": late.node_id,
            "head_node": ray.get_runtime_context().get_node_id(),
            "hosts": [{"node_address": nodes.get(host["node_id"]), **host} for host in hive.hosts("spread")],
            "driver_channel": None if hive._channel is None else hive._channel.endpoint.describe(),
            "ran_on": sorted(nodes.get(node, node) for node in ran_on),
            "forged_token": _refused_with(remote, bytes(32)),
            "data_plane": _after_the_refusal(hive),
        }))
        hive.close()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
