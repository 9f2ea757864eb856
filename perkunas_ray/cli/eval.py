"""`perkunas eval SOURCE`: held-out loss / perplexity / bits per byte, HellaSwag and samples, beside their floors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perkunas_ray.eval import DEFAULT_HELLASWAG_FILE, EvalOptions, evaluate, format_table
from perkunas_ray.eval.api import DEFAULT_HELLASWAG_LIMIT, DEFAULT_LOSS_LIMIT
from perkunas_ray.eval.ngram import DEFAULT_SMOOTHING_K
from perkunas_ray.eval.samples import DEFAULT_PROMPTS, SampleSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="held-out loss, perplexity, bits per byte, HellaSwag and samples",
                              description=__doc__)
    p.add_argument("source", help="a training run dir or a Hugging Face package dir")
    p.add_argument("--step", type=int, default=None, help="a run dir's checkpoint step (default: the newest)")
    p.add_argument("--data", default=None,
                   help="held-out text: a prepared data dir (its val split) or .txt/.jsonl/.parquet files "
                        "(default: the run's validation split)")
    p.add_argument("--text-field", default="text", help="the .jsonl/.parquet field holding a document")
    p.add_argument("--loss-limit", type=int, default=DEFAULT_LOSS_LIMIT,
                   help=f"documents or blocks scored for the loss (default {DEFAULT_LOSS_LIMIT}; 0: all)")
    p.add_argument("--train-data", default=None,
                   help="prepared data dir the unigram/bigram floors are fitted on (default: the run's)")
    p.add_argument("--smoothing-k", type=float, default=DEFAULT_SMOOTHING_K,
                   help=f"add-k smoothing of the unigram/bigram floors (default {DEFAULT_SMOOTHING_K})")
    p.add_argument("--hellaswag", default=str(DEFAULT_HELLASWAG_FILE),
                   help="HellaSwag JSONL (rowanz fields or the derived form; default the shared validation file)")
    p.add_argument("--no-hellaswag", action="store_true")
    p.add_argument("--limit", type=int, default=DEFAULT_HELLASWAG_LIMIT,
                   help=f"HellaSwag items scored, from the top of the file (default {DEFAULT_HELLASWAG_LIMIT}; "
                        f"0: all)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a sample prompt (repeatable; default: three story openings)")
    p.add_argument("--no-samples", action="store_true")
    defaults = SampleSettings()
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--json", default=None, metavar="FILE", help="also write the JSON result to FILE")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    prompts = () if args.no_samples else tuple(args.prompt or DEFAULT_PROMPTS)
    return EvalOptions(
        step=args.step, data=args.data, text_field=args.text_field, loss_limit=args.loss_limit,
        train_data=args.train_data, smoothing_k=args.smoothing_k,
        hellaswag=None if args.no_hellaswag else args.hellaswag, hellaswag_limit=args.limit, prompts=prompts,
        sample_settings=SampleSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                       top_p=args.top_p, seed=args.seed),
        batch_size=args.batch_size, device=args.device, dtype=args.dtype)


def run(args: argparse.Namespace) -> int:
    report = evaluate(args.source, options_from_args(args))
    line = json.dumps(report.to_dict())
    print(format_table(report))
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    return 0
