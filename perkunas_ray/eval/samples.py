"""A few completions at fixed seeds, for a human to read beside the numbers (the native engine samples)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.model_source import LoadedModel

DEFAULT_PROMPTS = ("Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because")
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SampleSettings:
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class Sample:
    prompt: str
    completion: str


def sample_completions(loaded: LoadedModel, prompts: Sequence[str],
                       settings: SampleSettings = SampleSettings()) -> list[Sample]:
    """One completion per prompt, each sampled with `settings.seed`, so a rerun prints the same text."""
    engine = NativeEngine(loaded.model, loaded.tokenizer, loaded.eos_token_id, KVPolicy(), name=loaded.name)
    params = SamplingParams(max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, seed=settings.seed)
    outputs = engine.generate(list(prompts), params)
    return [Sample(prompt, out.outputs[0].text) for prompt, out in zip(prompts, outputs, strict=True)]
