"""`perkunas prepare`: corpus files to tokenizer.json + packed .npy token shards + manifest.json."""

from __future__ import annotations

import argparse
import codecs
import sys

from perkunas_ray.data.prepare import PrepareConfig, run_prepare
from perkunas_ray.data.readers import DEFAULT_DELIMITER, DEFAULT_TEXT_COLUMN
from perkunas_ray.data.tokenizer import DEFAULT_VOCAB_SIZE
from perkunas_ray.errors import ConfigError, PerkunasError

DEFAULT_OUTPUT_DIR = "prepared_data"
_DEFAULTS = PrepareConfig(output_dir=DEFAULT_OUTPUT_DIR)


def _unescape(value: str) -> str:
    """Let `--delimiter '\\n\\n'` mean two newlines, keeping any non-ASCII text as typed."""
    try:
        return codecs.decode(value.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(f"bad escape in {value!r}: {exc.reason}") from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare", help="tokenize a corpus into packed token shards for training",
        description="Read .txt/.jsonl/.parquet documents, train (or load) a byte-level BPE tokenizer, and write "
                    "fixed blocks of seq_len+1 tokens to .npy shards with a checksummed manifest.json.")
    src = p.add_argument_group("input")
    src.add_argument("--train-data-dir", default=None, metavar="PATH", nargs="+",
                     help="corpus file(s), folder(s) (searched recursively) or glob(s); "
                          "default: the bundled TinyStories sample")
    src.add_argument("--val-data-dir", default=None, metavar="PATH", nargs="+",
                     help="separate validation corpus (files, folders or globs); then --val-fraction is not used")
    src.add_argument("--text-column", default=DEFAULT_TEXT_COLUMN,
                     help=f"jsonl field / parquet column holding the text (default: {DEFAULT_TEXT_COLUMN})")
    src.add_argument("--delimiter", default=DEFAULT_DELIMITER, type=_unescape,
                     help=f"document separator in .txt files, backslash escapes allowed; '' = one document per file "
                          f"(default: {DEFAULT_DELIMITER})")
    src.add_argument("--min-text-chars", type=int, default=_DEFAULTS.min_text_chars,
                     help="skip documents with fewer characters, after stripping whitespace (default: %(default)s)")
    src.add_argument("--parquet-batch-rows", type=int, default=_DEFAULTS.parquet_batch_rows,
                     help="rows per parquet read batch (default: %(default)s)")
    tok = p.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer-path", default=None, metavar="PATH",
                     help="use this tokenizer.json (file or a folder holding one) instead of training one")
    tok.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                     help="vocab size of the trained tokenizer, an upper bound on small corpora (default: %(default)s)")
    tok.add_argument("--tokenization-batch-size", type=int, default=_DEFAULTS.tokenization_batch_size,
                     help="documents per encode_batch call (default: %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where to write (default: %(default)s)")
    out.add_argument("--seq-len", type=int, default=_DEFAULTS.seq_len,
                     help="tokens of context per block; blocks hold seq_len+1 tokens (default: %(default)s)")
    out.add_argument("--blocks-per-shard", type=int, default=_DEFAULTS.blocks_per_shard,
                     help="blocks per .npy shard file (default: %(default)s)")
    out.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                     help="share of documents held out for validation, by a hash of the text (default: %(default)s)")
    out.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="key of the split hash (default: %(default)s)")
    out.add_argument("--overwrite", action="store_true", help="replace a data set already in --output-dir")
    out.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                     help="progress bars on stderr; auto = only on a terminal (default: %(default)s)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig the parsed flags describe (validated)."""
    if not args.output_dir:
        raise ConfigError("--output-dir must not be empty")
    return PrepareConfig(
        output_dir=args.output_dir, train_data=args.train_data_dir, val_data=args.val_data_dir,
        tokenizer_path=args.tokenizer_path, vocab_size=args.vocab_size, seq_len=args.seq_len,
        blocks_per_shard=args.blocks_per_shard, val_fraction=args.val_fraction, seed=args.seed,
        delimiter=args.delimiter, text_column=args.text_column, parquet_batch_rows=args.parquet_batch_rows,
        tokenization_batch_size=args.tokenization_batch_size, min_text_chars=args.min_text_chars,
        overwrite=args.overwrite,
    ).validate()


def run(args: argparse.Namespace) -> int:
    """Prepare the data set and print a summary; on bad input print `error: ...` and return 2."""
    try:
        config = config_from_args(args)
        progress = {"auto": None, "on": True, "off": False}[getattr(args, "progress", "auto")]
        summary = run_prepare(config, show_progress=progress)
    except PerkunasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    if summary.num_blocks.get("val", 0) == 0:
        print("note: the validation split has no blocks (corpus too small, or --val-fraction 0)", file=sys.stderr)
    return 0
