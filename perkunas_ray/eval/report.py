"""What `perkunas eval` found, as a dataclass, a human-readable table and one JSON object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from perkunas_ray.eval.heldout import LossTotals
from perkunas_ray.eval.hellaswag import METRICS, Accuracy
from perkunas_ray.eval.samples import Sample, SampleSettings


@dataclass
class HeldoutResult:
    description: str
    num_documents: int
    unit: str  # documents | blocks
    num_tokens: int
    num_bytes: int
    totals: dict[str, LossTotals]  # scorer -> totals; "model" first, then its floors


@dataclass
class HellaSwagResult:
    path: str
    preprocessing: list[str]
    num_items: int
    accuracy: dict[str, dict[str, Accuracy]]  # scorer -> metric -> accuracy
    chance: float  # expected accuracy of a random pick


@dataclass
class EvalReport:
    source: str
    model_name: str
    step: int | None
    floors: str  # how the unigram / bigram floors were fitted, or why there are none
    heldout: HeldoutResult | None = None
    hellaswag: HellaSwagResult | None = None
    samples: list[Sample] = field(default_factory=list)
    sample_settings: SampleSettings | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        heldout = hellaswag = None
        if self.heldout is not None:
            heldout = {"data": self.heldout.description, "num_documents": self.heldout.num_documents,
                       "unit": self.heldout.unit, "num_tokens": self.heldout.num_tokens, "num_bytes": self.heldout.num_bytes,
                       "scores": {name: totals.to_dict() for name, totals in self.heldout.totals.items()}}
        if self.hellaswag is not None:
            hellaswag = {"file": self.hellaswag.path, "preprocessing": self.hellaswag.preprocessing,
                         "n": self.hellaswag.num_items, "chance": self.hellaswag.chance,
                         "scores": {name: {metric: acc.to_dict() for metric, acc in by_metric.items()}
                                    for name, by_metric in self.hellaswag.accuracy.items()}}
        return {"source": self.source, "model": self.model_name, "step": self.step, "floors": self.floors,
                "heldout": heldout, "hellaswag": hellaswag,
                "samples": [dataclasses.asdict(sample) for sample in self.samples],
                "sample_settings": dataclasses.asdict(self.sample_settings) if self.sample_settings else None,
                "notes": self.notes}


def _accuracy_cell(acc: Accuracy) -> str:
    return f"{acc.value:.4f}" if acc.stderr is None else f"{acc.value:.4f} ± {acc.stderr:.4f}"


def format_table(report: EvalReport) -> str:
    step = "" if report.step is None else f" (step {report.step})"
    lines = [f"perkunas eval {report.source}{step}", f"floors: {report.floors}"]
    if report.heldout is not None:
        h = report.heldout
        lines += ["", f"held-out: {h.description} ({h.num_documents:,} {h.unit}, {h.num_tokens:,} tokens, "
                      f"{h.num_bytes:,} bytes)",
                  f"  {'scorer':<10}{'loss':>10}{'perplexity':>14}{'bits/byte':>12}"]
        lines += [f"  {name:<10}{t.loss:>10.4f}{t.perplexity:>14.2f}{t.bits_per_byte:>12.4f}"
                  for name, t in h.totals.items()]
    if report.hellaswag is not None:
        s = report.hellaswag
        lines += ["", f"hellaswag: {s.path} (n={s.num_items:,}; {'; '.join(s.preprocessing)})",
                  "  best ending by: acc = sum of log-probs, acc_norm = per character (lm-eval), "
                  "acc_token_mean = per token (build-nanogpt); ± standard error",
                  f"  {'scorer':<10}" + "".join(f"{metric:>22}" for metric in METRICS)]
        lines += [f"  {name:<10}" + "".join(f"{_accuracy_cell(by_metric[m]):>22}" for m in METRICS)
                  for name, by_metric in s.accuracy.items()]
        lines.append(f"  {'chance':<10}" + f"{s.chance:>22.4f}" * len(METRICS))
    if report.samples:
        settings = report.sample_settings or SampleSettings()
        lines += ["", f"samples (seed {settings.seed}, temperature {settings.temperature}, top-p {settings.top_p}, "
                      f"{settings.max_new_tokens} new tokens at most):"]
        lines += [f"  {sample.prompt!r} -> {sample.completion!r}" for sample in report.samples]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
