"""Turn a step's logits into tokens: repetition penalty, greedy or temperature / top-k / top-p / min-p
sampling with a per-request generator, and (top) logprobs of the model's distribution.
"""

from __future__ import annotations

import dataclasses

import torch

from perkunas_ray.engine.cpu_kernels import ArgmaxRows
from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.engine.logprobs import logprob_entries
from perkunas_ray.engine.request import Request

# Temperatures below this sample greedily (vLLM's rule): dividing by them overflows the logits.
MIN_TEMPERATURE = 1e-5


@dataclasses.dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per row: {sampled id: lp, top-k ids: lp}, or None
    errors: dict[int, Exception] = dataclasses.field(default_factory=dict)  # rows that failed (their token: 0)


def apply_repetition_penalty(logits: torch.Tensor, token_ids: list[int], penalty: float) -> torch.Tensor:
    """HF/vLLM rule on one row: a seen token's positive logit is divided by the penalty, a negative one
    multiplied."""
    if penalty == 1.0 or not token_ids:
        return logits
    seen = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=logits.device)
    picked = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row of temperature-scaled logits with top-k, top-p and min-p applied (-inf = removed)."""
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last dim, NaN counted as -inf (torch's argmax would pick a NaN)."""
    best = logits.argmax(-1)
    # argmax lands on a NaN only in a row holding one: check the picks, and redo just those rows.
    if bool(torch.isnan(logits.gather(-1, best.unsqueeze(-1))).any()):
        return torch.nan_to_num(logits, nan=float("-inf")).argmax(-1)
    return best


def is_plain_greedy(params: SamplingParams) -> bool:
    """Greedy with nothing to do per row: no penalty, no logprobs."""
    return params.temperature < MIN_TEMPERATURE and params.repetition_penalty == 1.0 and params.logprobs is None


class Sampler:
    def __init__(self, argmax_rows: ArgmaxRows | None = None) -> None:
        """argmax_rows: the C++ kernel (engine/cpu_kernels.py) that greedy batches of CPU fp32 logits take."""
        self.argmax_rows = argmax_rows

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        """logits (S, V) fp32, one row per request in `requests` order. A row that fails is reported in
        `errors` and the others are still sampled: one request's trouble stays its own."""
        if all(is_plain_greedy(r.params) for r in requests):  # one argmax for the batch
            if (self.argmax_rows is not None and logits.device.type == "cpu" and logits.dtype == torch.float32
                    and logits.is_contiguous()):
                return SamplerOutput(self.argmax_rows(logits), [None] * len(requests))
            return SamplerOutput(greedy(logits).tolist(), [None] * len(requests))
        return self._sample(logits, requests)

    @torch.inference_mode()
    def _sample(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        token_ids: list[int] = [0] * len(requests)
        errors: dict[int, Exception] = {}
        greedy_rows: list[int] = []
        # Logprobs are the model's own distribution, before penalties and temperature (vLLM's default).
        wanted = [row for row, r in enumerate(requests) if r.params.logprobs is not None]
        raw_logprobs = torch.log_softmax(self._rows(logits, wanted), dim=-1) if wanted else None
        for row, request in enumerate(requests):
            params = request.params
            try:
                if params.repetition_penalty != 1.0:
                    logits[row] = apply_repetition_penalty(logits[row], request.all_token_ids,
                                                           params.repetition_penalty)
                if params.temperature < MIN_TEMPERATURE:
                    greedy_rows.append(row)
                    continue
                token_ids[row] = self.sample_row(logits[row], request)
            except Exception as exc:  # noqa: BLE001 - confined to this row's request (see NativeEngine.step)
                errors[row] = exc
        if greedy_rows:
            best = greedy(self._rows(logits, greedy_rows)).tolist()
            for row, token in zip(greedy_rows, best, strict=True):
                token_ids[row] = token
        logprobs: list[dict[int, float] | None] = [None] * len(requests)
        if raw_logprobs is not None:
            for lp, row in zip(raw_logprobs, wanted, strict=True):
                if row not in errors:
                    k = requests[row].params.logprobs or 0
                    logprobs[row] = logprob_entries(lp[None], [token_ids[row]], k)[0]
        return SamplerOutput(token_ids, logprobs, errors)

    def sample_row(self, logits: torch.Tensor, request: Request) -> int:
        """One token from one row. Logits that give no usable distribution (NaN, all -inf, an overflow to
        +inf from extreme penalties) fall back to the greedy token instead of failing."""
        probs = filter_logits(logits / request.params.temperature, request.params).softmax(-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            return int(greedy(logits))
        return int(torch.multinomial(probs, 1, generator=request.generator))

    @staticmethod
    def _rows(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if len(rows) == logits.shape[0]:
            return logits
        return logits.index_select(0, torch.tensor(rows, dtype=torch.long, device=logits.device))
