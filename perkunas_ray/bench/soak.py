"""`perkunas bench soak`: N concurrent clients against kvserve on a local Ray Serve for a while, mixing good
requests, bad requests and disconnects; passes with zero 5xx, zero leaked KV blocks and flat memory (each Serve
process's RSS at the end within 10% of its RSS after the warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from perkunas_ray.kvserve.registry import Registry, parse_registry

TOKEN = "soak-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_RSS_GROWTH = 0.10
PROMPTS = ["Once upon a time", "The little dog ran to the park and", "Lily and Ben found a big red ball",
           "One day, a cat named Tom"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("soak", help="kvserve soak: concurrent good/bad/disconnecting clients; "
                                           "0 5xx, 0 leaked KV blocks, flat memory")
    p.add_argument("--model-dir", default=None, help="a run dir or HF package dir (default: a tiny random model)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration-s", type=float, default=300.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="when the memory baseline is taken")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def soak_registry(model_dir: str | Path) -> Registry:
    return parse_registry({"models": {"tiny": {"source": str(model_dir), "num_cpus": 0,
                                               "kv_policy": {"num_blocks": 512}}},
                           "limits": {"max_n": 4}})


def _bad_requests() -> list[tuple[str, dict[str, str], bytes]]:
    """(path, headers, body) of requests that must each get a 4xx."""
    json_h = {**AUTH, "Content-Type": "application/json"}
    deep = '{"model": "tiny", "prompt": "x", "user": ' + "[" * 5000 + "]" * 5000 + "}"
    return [
        ("/v1/completions", json_h, b'{"model": "tiny", "prompt": '),
        ("/v1/completions", json_h, b'{"model": "tiny", "prompt": "a \\ud800 b"}'),
        ("/v1/completions", json_h, deep.encode()),
        ("/v1/completions", json_h, b'{"model": "tiny", "prompt": "x", "n": 1000000000}'),
        ("/v1/completions", json_h, b'{"model": "tiny", "prompt": "x", "seed": 18446744073709551616}'),
        ("/v1/completions", json_h, b'{"model": "tiny", "prompt": "x", "logit_bias": {"5": 3}}'),
        ("/v1/completions", json_h, b'{"model": "tiny", "prompt": "x", "temperature": NaN}'),
        ("/v1/chat/completions", json_h, b'{"model": "tiny", "messages": []}'),
        ("/v1/chat/completions", {"Authorization": "Bearer wrong"}, b'{}'),
        ("/v1/completions", json_h, b'{"model": "nope", "prompt": "x"}'),
    ]


async def _client(url: str, rng: random.Random, until: float, max_tokens: int, counts: Counter) -> None:
    import httpx

    bad = _bad_requests()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.time() < until:
            kind = rng.choices(("good", "stream", "chat", "bad", "disconnect"), (3, 2, 2, 3, 2))[0]
            body = {"model": "tiny", "prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(1, max_tokens),
                    "temperature": rng.choice((0, 0.7, 1.0)), "n": rng.choice((1, 1, 2))}
            if kind == "good":
                resp = await http.post("/v1/completions", json=body, headers=AUTH)
                counts[f"{kind} {resp.status_code}"] += 1
            elif kind in ("stream", "chat"):
                path = "/v1/completions" if kind == "stream" else "/v1/chat/completions"
                if kind == "chat":
                    body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
                text = ""
                async with http.stream("POST", path, json={**body, "stream": True}, headers=AUTH) as resp:
                    async for chunk in resp.aiter_text():
                        text += chunk
                errors = [e for e in text.split("\n\n") if e.startswith('data: {"error"')]
                counts[f"{kind} {resp.status_code}{' error-event' if errors else ''}"] += 1
            elif kind == "bad":
                path, headers, raw = rng.choice(bad)
                resp = await http.post(path, content=raw, headers=headers)
                counts[f"{kind} {resp.status_code}"] += 1
            else:
                body.update(max_tokens=200, ignore_eos=True, stream=True)
                async with http.stream("POST", "/v1/completions", json=body, headers=AUTH) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: "):
                            break  # hang up mid-stream
                counts[f"{kind} {resp.status_code}"] += 1


def _serve_processes() -> dict[int, str]:
    """Serve's processes (replicas, proxy, controller) started under this process: pid -> title."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            titles[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine = {os.getpid()}
    grew = True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in mine and pid not in mine}
        mine |= new
        grew = bool(new)
    return {pid: titles[pid] for pid in mine
            if titles.get(pid, "").startswith(("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController"))}


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _soak(url: str, clients: int, duration_s: float, warmup_s: float, max_tokens: int,
                seed: int) -> dict[str, Any]:
    counts: Counter = Counter()
    start = time.time()
    until = start + duration_s
    tasks = [asyncio.create_task(_client(url, random.Random(seed + i), until, max_tokens, counts))
             for i in range(clients)]
    await asyncio.sleep(warmup_s)
    baseline = {pid: (title.split(".")[0], _rss_mib(pid)) for pid, title in _serve_processes().items()}
    await asyncio.gather(*tasks)
    end = {pid: _rss_mib(pid) for pid in baseline}
    return {"counts": dict(counts), "elapsed_s": time.time() - start,
            "rss_mib": {f"{title} ({pid})": (rss, end[pid]) for pid, (title, rss) in baseline.items()}}


def wait_idle(url: str, headers: dict[str, str], timeout_s: float = 30.0) -> dict[str, Any]:
    """The engine's stats once nothing runs, waits or holds a KV block (or when `timeout_s` has passed)."""
    import httpx

    deadline = time.time() + timeout_s
    while True:
        stats = httpx.get(f"{url}/kvserve/stats", headers=headers, timeout=30).json()
        if (stats["num_running"], stats["num_waiting"], stats["num_blocks_used"]) == (0, 0, 0) \
                or time.time() > deadline:
            return stats
        time.sleep(0.2)


def run(args: argparse.Namespace) -> int:
    from deployments import launch
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    model_dir = args.model_dir or make_tiny_run_dir(Path(tempfile.mkdtemp(prefix="soak_")) / "tiny")
    print(f"soak: {args.clients} clients for {args.duration_s:.0f} s (memory baseline at {args.warmup_s:.0f} s), "
          f"model {model_dir}", flush=True)
    with launch.serving(soak_registry(model_dir), f"soak:{TOKEN}", num_cpus=args.num_cpus) as url:
        result = asyncio.run(_soak(url, args.clients, args.duration_s, args.warmup_s, args.max_tokens, args.seed))
        stats = wait_idle(url, AUTH)
    counts = result["counts"]
    num_5xx = sum(n for key, n in counts.items() if key.split()[1].startswith("5"))
    num_error_events = sum(n for key, n in counts.items() if key.endswith("error-event"))
    growth = {name: (end - base) / base for name, (base, end) in result["rss_mib"].items() if base and end}
    print(f"\nrequests: {sum(counts.values())} in {result['elapsed_s']:.0f} s")
    for key in sorted(counts):
        print(f"  {key:28s} {counts[key]:>7d}")
    print("RSS (MiB) after warm-up -> end:")
    for name, (base, end) in sorted(result["rss_mib"].items()):
        print(f"  {name:60s} {base:8.1f} -> {end:8.1f} ({growth.get(name, 0) * 100:+.1f}%)")
    print(f"engine after: {stats['num_blocks_used']} blocks used, {stats['num_running']} running, "
          f"{stats['num_failed']} failed, {stats['num_aborted']} aborted")
    passed = (num_5xx == 0 and num_error_events == 0 and stats["num_blocks_used"] == 0 and bool(growth)
              and max(growth.values()) <= MAX_RSS_GROWTH)
    print(json.dumps({"bench": "soak", "clients": args.clients, "duration_s": args.duration_s,
                      "requests": sum(counts.values()), "num_5xx": num_5xx, "num_error_events": num_error_events,
                      "blocks_used_after": stats["num_blocks_used"], "max_rss_growth": max(growth.values(), default=None),
                      "passed": passed}))
    return 0 if passed else 1
