"""Corpus preparation (read, tokenize, pack, shard) and the torch-free dataset API the trainers read from."""

from perkunas_ray.data.cursor import BatchCursor, epoch_order, iter_eval_batches
from perkunas_ray.data.dataset import PackedTokenDataset
from perkunas_ray.data.dtypes import choose_token_dtype
from perkunas_ray.data.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE_NAME,
    DataManifest,
    ShardInfo,
    SourceInfo,
    SplitInfo,
    load_manifest,
    write_manifest,
)
from perkunas_ray.data.packing import BlockPacker, pack_blocks
from perkunas_ray.data.prepare import PrepareConfig, PrepareSummary, prepare_corpus, run_prepare
from perkunas_ray.data.readers import ReaderOptions, iter_documents
from perkunas_ray.data.resources import bundled_corpus_path
from perkunas_ray.data.sources import SourceFile, resolve_sources
from perkunas_ray.data.split import is_validation_document
from perkunas_ray.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TOKENIZER_FILE_NAME,
    TokenizerInfo,
    describe_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "EOS_TOKEN",
    "FORMAT_VERSION",
    "MANIFEST_FILE_NAME",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE_NAME",
    "BatchCursor",
    "BlockPacker",
    "DataManifest",
    "PackedTokenDataset",
    "PrepareConfig",
    "PrepareSummary",
    "ReaderOptions",
    "ShardInfo",
    "SourceFile",
    "SourceInfo",
    "SplitInfo",
    "TokenizerInfo",
    "bundled_corpus_path",
    "choose_token_dtype",
    "describe_tokenizer",
    "epoch_order",
    "is_validation_document",
    "iter_documents",
    "iter_eval_batches",
    "load_manifest",
    "load_tokenizer",
    "pack_blocks",
    "prepare_corpus",
    "resolve_sources",
    "run_prepare",
    "train_tokenizer",
    "write_manifest",
]
