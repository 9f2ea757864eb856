"""Write SFT records as a prepared data dir the trainers read (manifest, int32 shards, the parent's tokenizer).

Padding, not packing: one sample per row, padded with the pad token, whose targets are untrained. With
causal attention the pads after a sample cannot change its logits, so a sample's loss is its loss alone
with no attention-mask or position plumbing through the streamed shards, the reference model and the
serving engine; packing would need a block-diagonal mask and per-sample positions in every one of them.
The price is compute on pad positions, small next to what the change would risk for a few-thousand-sample set.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perkunas_ray.data.manifest import DataManifest, SourceInfo, SplitInfo, write_manifest
from perkunas_ray.data.publish import staged_data_dir
from perkunas_ray.data.shards import TokenShardWriter
from perkunas_ray.data.sources import file_sha256
from perkunas_ray.data.tokenizer import TOKENIZER_FILE_NAME, describe_tokenizer, load_tokenizer
from perkunas_ray.errors import ConfigError, DataError
from perkunas_ray.sft.records import SftRecord, read_records
from perkunas_ray.sft.render import render_sample
from perkunas_ray.stream.batch import mask_untrained

HELDOUT_FILE = "val_records.jsonl"  # the held-out conversations, for chat and eval beside the val blocks
BLOCKS_PER_SHARD = 4096


@dataclass
class SftSummary:
    """Counts per split: samples kept, trained (assistant) tokens, samples too long for a block."""

    output_dir: Path
    num_samples: dict[str, int] = field(default_factory=dict)
    num_trained_tokens: dict[str, int] = field(default_factory=dict)
    num_too_long: int = 0


def _split(records: list[SftRecord], val_fraction: float, seed: int) -> dict[str, list[SftRecord]]:
    """A seeded shuffle picks the held-out share of the records (before any is dropped for length)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(records))
    num_val = round(len(records) * val_fraction)
    return {"train": [records[i] for i in sorted(order[num_val:])],
            "val": [records[i] for i in sorted(order[:num_val])]}


def prepare_sft(sources: list[str | Path], tokenizer_file: str | Path, output_dir: str | Path, seq_len: int,
                val_fraction: float = 0.1, seed: int = 0) -> SftSummary:
    """Render every record, pad each to seq_len + 1 tokens (longer ones are skipped and counted), split off
    `val_fraction` as the val split, and publish the data dir whole (manifest last)."""
    if seq_len <= 0:
        raise ConfigError(f"seq_len must be > 0, got {seq_len}")
    tokenizer = load_tokenizer(tokenizer_file)
    info = describe_tokenizer(tokenizer, tokenizer_file)
    if info.pad_id is None:
        raise DataError(f"{tokenizer_file}: tokenizer has no <|pad|> token to pad SFT samples with")
    records = [r for source in sources for r in read_records(source)]
    if not records:
        raise DataError(f"{', '.join(map(str, sources))}: no SFT records")
    block_len = seq_len + 1
    summary = SftSummary(Path(output_dir))
    splits: dict[str, SplitInfo] = {}
    with staged_data_dir(Path(output_dir)) as staging:
        for split, chosen in _split(records, val_fraction, seed).items():
            writer = TokenShardWriter(staging, split, block_len, np.int32, BLOCKS_PER_SHARD)
            tokens = trained_tokens = too_long = dropped_tokens = 0
            kept: list[SftRecord] = []
            for record in chosen:
                ids, trained = render_sample(record.messages, tokenizer, record.where)
                if len(ids) > block_len:
                    too_long, dropped_tokens = too_long + 1, dropped_tokens + len(ids)
                    continue
                pad = block_len - len(ids)
                ids = np.concatenate([ids, np.full(pad, info.pad_id, dtype=np.int64)])
                trained = np.concatenate([trained, np.zeros(pad, dtype=bool)])
                writer.add(mask_untrained(ids, trained)[None])
                tokens, trained_tokens = tokens + block_len - pad, trained_tokens + int(trained.sum())
                kept.append(record)
            splits[split] = SplitInfo(num_documents=len(kept), num_tokens=tokens, num_blocks=writer.num_blocks,
                                      num_dropped_tokens=dropped_tokens, shards=writer.finish())
            summary.num_samples[split], summary.num_trained_tokens[split] = len(kept), trained_tokens
            summary.num_too_long += too_long
            if split == "val":
                with open(staging / HELDOUT_FILE, "w", encoding="utf-8") as handle:
                    for record in kept:
                        handle.write(json.dumps({"messages": record.messages, "source": record.where}) + "\n")
        if not splits["train"].num_blocks:
            raise DataError(f"no SFT sample fits seq_len {seq_len} (+1); raise --seq-len")
        if not splits["val"].num_blocks:
            del splits["val"]
        shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE_NAME)
        write_manifest(staging, DataManifest(
            tokenizer_file=TOKENIZER_FILE_NAME, tokenizer_sha256=file_sha256(staging / TOKENIZER_FILE_NAME),
            vocab_size=info.vocab_size, eos_id=info.eos_id, pad_id=info.pad_id, dtype="int32", seq_len=seq_len,
            splits=splits, total_tokens=sum(s.num_tokens for s in splits.values()), dropped_tail_tokens=0,
            sources=[SourceInfo(str(Path(s).resolve()), Path(s).suffix.lstrip("."), "train+val",
                                Path(s).stat().st_size, file_sha256(Path(s))) for s in sources],
            special_token_ids=info.special_token_ids, num_skipped_documents=summary.num_too_long,
            settings={"kind": "sft", "val_fraction": val_fraction, "split_seed": seed,
                      "layout": "one sample per row, padded with pad_id",
                      "labels": "a negative value -(id+1) is an untrained target (prompt, role tokens, padding)",
                      "num_trained_tokens": summary.num_trained_tokens}))
    return summary
