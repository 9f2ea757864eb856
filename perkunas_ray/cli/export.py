"""`perkunas export hf|gguf|ollama`: write a run's checkpoint as a Hugging Face package, a GGUF file or an Ollama dir."""

from __future__ import annotations

import argparse

from perkunas_ray.export.gguf_export import GGUF_DTYPES, export_gguf
from perkunas_ray.export.hf import HF_DTYPES, export_hf
from perkunas_ray.export.ollama import DEFAULT_SYSTEM, GGUF_FILE, MODELFILE, export_ollama


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="training run directory (config.json, tokenizer.json, checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="export this checkpoint step (default: the newest complete)")
    p.add_argument("--tokenizer-dir", default=None, help="folder with the tokenizer.json to ship "
                   "(default: RUN/tokenizer.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a run to Hugging Face, GGUF (llama.cpp) or Ollama")
    kinds = parser.add_subparsers(dest="export_kind", metavar="FORMAT", required=True)

    hf = kinds.add_parser("hf", help="Hugging Face package that transformers and vLLM load as is")
    _common(hf)
    hf.add_argument("--output-dir", required=True, help="package directory to create")
    hf.add_argument("--dtype", default="fp32", metavar="|".join(HF_DTYPES), help="weight dtype (default fp32)")
    hf.set_defaults(func=run_hf)

    gg = kinds.add_parser("gguf", help="one .gguf file for llama.cpp")
    _common(gg)
    gg.add_argument("--output", required=True, help="the .gguf file to create")
    gg.add_argument("--dtype", default="f32", metavar="|".join(GGUF_DTYPES), help="weight dtype (default f32)")
    gg.set_defaults(func=run_gguf)

    ol = kinds.add_parser("ollama", help=f"{GGUF_FILE} + {MODELFILE} for `ollama create`")
    _common(ol)
    ol.add_argument("--output-dir", required=True, help="directory to create")
    ol.add_argument("--dtype", default="f16", metavar="|".join(GGUF_DTYPES), help="weight dtype (default f16)")
    ol.add_argument("--chat", action="store_true", help="TEMPLATE in the chat format (<|user|>...<|end|>) instead "
                    "of plain completion")
    ol.add_argument("--system", default=DEFAULT_SYSTEM, help="SYSTEM prompt of the Modelfile")
    ol.add_argument("--temperature", type=float, default=0.8)
    ol.add_argument("--top-p", type=float, default=0.95)
    ol.set_defaults(func=run_ollama)


def run_hf(args: argparse.Namespace) -> int:
    out = export_hf(args.run_dir, args.output_dir, tokenizer_dir=args.tokenizer_dir, dtype=args.dtype,
                    overwrite=args.overwrite, step=args.step)
    print(f"wrote Hugging Face package {out}")
    return 0


def run_gguf(args: argparse.Namespace) -> int:
    out = export_gguf(args.run_dir, args.output, dtype=args.dtype, overwrite=args.overwrite, step=args.step,
                      tokenizer_dir=args.tokenizer_dir)
    print(f"wrote GGUF file {out}")
    return 0


def run_ollama(args: argparse.Namespace) -> int:
    out = export_ollama(args.run_dir, args.output_dir, dtype=args.dtype, overwrite=args.overwrite, step=args.step,
                        tokenizer_dir=args.tokenizer_dir, chat=args.chat, system=args.system,
                        temperature=args.temperature, top_p=args.top_p)
    print(f"wrote {out / GGUF_FILE} and {out / MODELFILE}; next: ollama create NAME -f {out / MODELFILE}")
    return 0
