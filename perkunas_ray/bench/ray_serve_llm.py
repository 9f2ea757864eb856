"""Deploy Ray Serve LLM's OpenAI app (`ray.serve.llm.build_openai_app`) on a model dir, on CPU, for a benchmark."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

APP_NAME = "ray-serve-llm"
ROUTE_PREFIX = "/ray-serve-llm"


@contextlib.contextmanager
def ray_serve_llm(base_url: str, model_dir: str | Path, served_name: str, engine_args: dict[str, Any],
                  num_cpus: float) -> Iterator[str]:
    """Ray Serve LLM's app beside ours on the running Serve instance (its own route prefix), one replica on CPU
    with the same vLLM engine arguments as our vLLM engine; yields its base URL, deletes the app at the end.

    Ray Serve LLM asks for a GPU unless told the hardware: its placement bundle here is CPU only, which makes it
    pick its CPU accelerator config. It reserves `num_cpus` + 1 Ray CPUs for the replica (its actor's CPU joins the
    bundle) and 1 for its ingress."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    engine_kwargs = {k: v for k, v in engine_args.items() if k not in ("model", "tokenizer")}
    config = LLMConfig(
        model_loading_config={"model_id": served_name, "model_source": str(model_dir)},
        engine_kwargs=engine_kwargs,
        placement_group_config={"bundles": [{"CPU": num_cpus}]},
        deployment_config={"num_replicas": 1, "max_ongoing_requests": 64},
    )
    serve.run(build_openai_app({"llm_configs": [config]}), name=APP_NAME, route_prefix=ROUTE_PREFIX)
    try:
        yield base_url.rstrip("/") + ROUTE_PREFIX
    finally:
        serve.delete(APP_NAME)
