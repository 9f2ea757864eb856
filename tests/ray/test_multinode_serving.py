"""kvserve on a cluster of three nodes (one machine): engine replicas on two nodes behind one ingress; one node
removed under load ends its streams with the SSE error event then [DONE], later requests go to the survivor
(no 5xx), the router forgets the dead replica's blocks, no KV block leaks, and a node added back restores the
replica count."""

from __future__ import annotations

import asyncio
import json

import pytest
import ray

from tests.ray.multinode import add_node, remove_node, start_cluster, wait_until

pytestmark = pytest.mark.ray

ENGINE = "perkunas_engine"  # the custom resource of the nodes that serve (the registry's `resources`)
HEAD = "perkunas_head"  # the head's: the ingress stays there (ingress.resources)
TOKEN = "multinode-token"
H = {"Authorization": f"Bearer {TOKEN}"}
NUM_STREAMS, NUM_AFTER = 8, 8


def replica_nodes() -> dict[str, str]:
    """Engine replica actor name -> its node, for the replicas alive now."""
    out = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "engine_tiny" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            with_node = handle.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
            try:
                out[actor["name"]] = ray.get(with_node, timeout=30)
            except ray.exceptions.RayError:
                continue  # a replica whose node is going away
    return out


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("kvserve")
    deployment = app.deployments.get("engine_tiny") if app else None
    return deployment.replica_states.get("RUNNING", 0) if deployment else 0


async def one_stream(http, url: str, prompt: str, max_tokens: int, started: asyncio.Event | None = None,
                     counter: list[int] | None = None) -> tuple[int, list[str]]:
    """(HTTP status, the SSE data payloads) of one streamed completion."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    events: list[str] = []
    async with http.stream("POST", f"{url}/v1/completions", json=body, headers=H) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return resp.status_code, events
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if counter is not None and len(events) == 2:
                    counter[0] += 1
                    if counter[0] == NUM_STREAMS and started is not None:
                        started.set()  # every stream is generating
    return 200, events


def outcome(events: list[str]) -> str:
    """answered (it ran to its end), errored (the error event, then [DONE]) or broken (anything else)."""
    if len(events) >= 2 and events[-1] == "[DONE]":
        last = json.loads(events[-2])
        if "error" in last:
            error = last["error"]
            return "errored" if set(error) == {"message", "type", "param", "code"} else "broken"
        if last.get("choices") and last["choices"][0].get("finish_reason") == "length":
            return "answered"
    return "broken"


def test_a_node_lost_under_load_and_added_back(tmp_path) -> None:
    import httpx
    from ray import serve

    from deployments import launch
    from perkunas_ray.bench.soak import wait_idle
    from perkunas_ray.kvserve.registry import load_registry
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    # Long streams: the lost node's must still be running when the router has heard of their blocks and the node
    # goes (with 480 tokens, on a busy machine the router heard of them only near their end, and they finished).
    run = make_tiny_run_dir(tmp_path / "tiny", max_seq_len=2048)
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"models:\n  tiny:\n    source: {run}\n    num_replicas: 2\n    num_cpus: 1\n"
                        f"    resources: {{{ENGINE}: 1}}\n    health_check_period_s: 1\n"
                        "    kv_policy: {num_blocks: 1024}\n"
                        f"ingress: {{resources: {{{HEAD}: 0.01}}}}\nrouter: {{routing_stats_period_s: 0.2}}\n")
    # The head: controller, the one HTTP proxy and the ingress; the engines need a node with ENGINE.
    cluster = start_cluster({HEAD: 1}, num_cpus=1)
    try:
        nodes = [add_node(cluster, {ENGINE: 1}) for _ in range(2)]
        port = launch.free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        launch.deploy(load_registry(registry), f"test:{TOKEN}")
        url = f"http://127.0.0.1:{port}"
        placed = replica_nodes()
        assert sorted(placed.values()) == sorted(n.node_id for n in nodes), placed
        lost = nodes[1]
        replica_id = {node: name.split("#")[-1] for name, node in placed.items()}  # Serve's replica unique ids
        lost_id = replica_id[lost.node_id]
        before: dict = {}

        async def load() -> tuple[list[tuple[int, list[str]]], list[tuple[int, list[str]]]]:
            started, counter = asyncio.Event(), [0]
            async with httpx.AsyncClient(timeout=120) as http:
                streams = [asyncio.create_task(one_stream(http, url, f"Story {i}: once upon a time", 1900, started,
                                                          counter)) for i in range(NUM_STREAMS)]
                await asyncio.wait_for(started.wait(), timeout=120)
                for _ in range(600):  # until the router has heard of blocks on the replica about to be lost
                    before.update((await http.get(f"{url}/kvserve/stats", headers=H)).json()["routers"][0])
                    if before["cached_blocks"].get(lost_id):
                        break
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(remove_node, cluster, lost)
                during = await asyncio.gather(*streams)
                after = await asyncio.gather(*(one_stream(http, url, f"After {i}: the dog", 16)
                                               for i in range(NUM_AFTER)))
            return during, after

        during, after = asyncio.run(load())
        outcomes = [outcome(events) for status, events in during]
        after_codes = [status for status, _ in after]
        num_5xx_after = sum(1 for code in after_codes if code >= 500)
        stats = wait_idle(url, H)
        print(f"\nsent {NUM_STREAMS} streams: answered {outcomes.count('answered')}, errored in flight "
              f"{outcomes.count('errored')}; after the loss: sent {NUM_AFTER}, answered "
              f"{sum(1 for s, e in after if s == 200 and outcome(e) == 'answered')}, 5xx {num_5xx_after}; "
              f"KV blocks left on the survivor {stats['num_blocks_used']}; the router's cached blocks per replica "
              f"before the loss {before['cached_blocks']}, after {stats['routers'][0]['cached_blocks']}")
        assert "broken" not in outcomes, [e[-3:] for _, e in during]
        assert outcomes.count("errored") >= 1  # some streams ran on the lost node
        assert outcomes.count("answered") >= 1  # and the survivor's went on
        assert num_5xx_after == 0, after_codes
        assert all(s == 200 and outcome(e) == "answered" for s, e in after), after
        assert stats["num_blocks_used"] == 0 and stats["num_running"] == 0
        # The router knew both replicas; now it routes to the survivor alone and holds no blocks of the dead one.
        assert before["replicas"] == sorted(replica_id.values()) and before["cached_blocks"][lost_id] > 0, before
        (view,) = stats["routers"]
        assert view["replicas"] == [replica_id[nodes[0].node_id]], view
        assert set(view["cached_blocks"]) <= {replica_id[nodes[0].node_id]}, view

        added = add_node(cluster, {ENGINE: 1})
        wait_until("Serve to restore 2 replicas", lambda: running_replicas() == 2, timeout=180)
        wait_until("the new replica to answer", lambda: len(replica_nodes()) == 2)
        assert sorted(replica_nodes().values()) == sorted([nodes[0].node_id, added.node_id])
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
