"""`perkunas bench serve` with vLLM: our Serve path over a vLLM engine against vLLM's own OpenAI server and Ray Serve
LLM on the same Hugging Face export and engine arguments, and the native engine against the vLLM one.

Sides (added to bench serve's; each is an HTTP round runner over the same `/v1/completions` workload):
  http-vllm       `perkunas serve` with `engine: vllm` (the registry's second model)
  vllm-server     `python -m vllm.entrypoints.openai.api_server`, alone (no Ray) and beside the Serve cluster
  ray-serve-llm   `ray.serve.llm.build_openai_app` on the same Serve cluster, one CPU replica
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VLLM_MODEL = "bench-vllm"
GOAL_VS_VLLM_SERVER = {1: 0.95, 16: 0.9}  # serve (engine vllm) tok/s / vLLM's server tok/s, at least
VLLM_SETTLE_S = 1.5  # vLLM's workers spin for 1 s after their last work (busy_loop_s); each round waits past it


def engine_args(spec: Any) -> tuple[Path, dict[str, Any]]:
    """The model dir and AsyncEngineArgs keywords our vLLM replica uses for `spec` (the server sides get the same),
    without the KV events publisher that only our router needs."""
    from vllm.platforms import current_platform

    from perkunas_ray.engine.vllm_engine import vllm_engine_args
    from perkunas_ray.engine.vllm_source import vllm_model_dir

    model_dir = vllm_model_dir(spec.source)
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(spec.dtype, spec.dtype)
    return model_dir, vllm_engine_args(str(model_dir), spec.kv_policy, on_cpu=bool(current_platform.is_cpu()),
                                       max_model_len=spec.max_model_len, dtype=dtype, seed=spec.seed)


def vllm_ratios(results: dict[str, dict[int, dict[str, Any]]], alone: dict[str, dict[int, dict[str, Any]]],
                per_round: dict[int, list[dict[str, float]]], streams: list[int]) -> dict[str, Any]:
    """Print the vLLM comparisons; their ratios (same-phase ones are medians over rounds run back to back)."""
    def tps(side: dict[int, dict[str, Any]], n: int) -> float:
        return side[n]["tokens_per_s"]

    def row(label: str, cells: list[float], fmt: str = "{:>10.2f}") -> None:
        print(f"  {label:44s}" + "".join(fmt.format(c) for c in cells))

    def per_round_ratio(n: int, num: str, den: str) -> float:
        import statistics

        return statistics.median(r[num] / r[den] for r in per_round[n])

    ratios: dict[str, Any] = {}
    print("\nvLLM (same HF export and engine arguments on every vLLM side)")
    if "vllm-server" in results:
        ratios["vs_vllm_server"] = {n: per_round_ratio(n, "http-vllm", "vllm-server") for n in streams}
        row("serve (engine vllm) / vLLM server, same cluster", list(ratios["vs_vllm_server"].values()))
    if "vllm-server" in alone:
        ratios["vs_vllm_server_alone"] = {n: tps(results["http-vllm"], n) / tps(alone["vllm-server"], n)
                                          for n in streams}
        row("serve (engine vllm) / vLLM server alone", list(ratios["vs_vllm_server_alone"].values()))
    print("  goals serve / vLLM server: " + ", ".join(f">= {g} at {n} streams" for n, g in GOAL_VS_VLLM_SERVER.items()))
    if "http" in results:
        ratios["native_vs_vllm"] = {n: per_round_ratio(n, "http", "http-vllm") for n in streams}
        row("serve: native engine / vllm engine (tok/s)", list(ratios["native_vs_vllm"].values()))
    if "ray-serve-llm" in results:
        ratios["vs_ray_serve_llm"] = {n: per_round_ratio(n, "http-vllm", "ray-serve-llm") for n in streams}
        row("serve (engine vllm) / Ray Serve LLM", list(ratios["vs_ray_serve_llm"].values()))
    print("  TTFT p50 (ms)")
    for side in ("http", "http-vllm", "vllm-server", "ray-serve-llm"):
        if side in results:
            row(side, [results[side][n]["ttft_p50_ms"] for n in streams], "{:>10.1f}")
    return ratios
