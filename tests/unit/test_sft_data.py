"""SFT data: records read by line, rendered with the chat template, label-masked, written as a data dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from perkunas_ray.data import PackedTokenDataset, bundled_corpus_path, load_manifest, train_tokenizer
from perkunas_ray.errors import DataError
from perkunas_ray.model.loss import IGNORE_INDEX
from perkunas_ray.sft import prepare_sft, read_records, render_sample
from perkunas_ray.sft.prepare import HELDOUT_FILE
from perkunas_ray.stream.batch import split_batch


def write_records(path: Path, num: int, words_per_part: int = 3) -> Path:
    """`num` short Alpaca records made of bundled-corpus words: instruction, optional input, output."""
    words = bundled_corpus_path().read_text(encoding="utf-8")[:20_000].split()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(num):
            part = words[i * 3 * words_per_part: (i + 1) * 3 * words_per_part]
            record = {"instruction": " ".join(part[:words_per_part]),
                      "input": " ".join(part[words_per_part:2 * words_per_part]) if i % 2 else "",
                      "output": " ".join(part[2 * words_per_part:])}
            handle.write(json.dumps(record) + "\n")
    return path


def small_tokenizer(path: Path) -> Path:
    """A 300-token byte-level BPE with the chat role tokens, saved to `path`."""
    text = bundled_corpus_path().read_text(encoding="utf-8")[:60_000]
    train_tokenizer(text.split("\n"), vocab_size=300).save(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    return small_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_trained_tokens_are_the_reply_and_its_end_token(tokenizer_file):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "Again."},
                {"role": "assistant", "content": "Hi."}]
    ids, trained = render_sample(messages, tok, "x")
    assert tok.decode(ids.tolist(), skip_special_tokens=False) == (
        "<|system|>Be brief.<|end|><|user|>Say hi.<|end|><|assistant|>Hi there.<|end|>"
        "<|user|>Again.<|end|><|assistant|>Hi.<|end|>")
    # the trained runs, decoded, are exactly each reply and its end token; role tokens are not trained
    runs = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(trained.astype(int))) + 1)
    texts = [tok.decode(ids[r].tolist(), skip_special_tokens=False) for r in runs if trained[r[0]]]
    assert texts == ["Hi there.<|end|>", "Hi.<|end|>"]


@pytest.mark.parametrize("line,message", [
    ('{"instruction": "a"}', "line 2: missing 'output'"),
    ('{"messages": []}', "line 2: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "line 2: 'messages' has no assistant message"),
    ('{"instruction": "a", "output": 3}', "line 2: 'output' must be a string"),
    ('not json', "line 2: not valid JSON"),
])
def test_malformed_records_are_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok", "output": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}: {message}"):
        list(read_records(path))


def test_a_role_the_template_lacks_is_named_by_line(tmp_path, tokenizer_file):
    path = tmp_path / "roles.jsonl"
    path.write_text('{"instruction": "ok", "output": "ok"}\n'
                    '{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    with pytest.raises(DataError, match=f"{path}: line 2: role 'tool' is not one the chat template knows"):
        prepare_sft([path], tokenizer_file, tmp_path / "out", seq_len=32)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_json_and_parquet_records_read_like_jsonl(tmp_path):
    records = [json.loads(line) for line in write_records(tmp_path / "r.jsonl", 4).read_text().splitlines()]
    (tmp_path / "r.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    chats = [[r.messages for r in read_records(tmp_path / f"r.{ext}")] for ext in ("jsonl", "json", "parquet")]
    assert chats[0] == chats[1] == chats[2]
    assert chats[0][1][0]["content"].count("\n\n") == 1  # the input follows the instruction
    with pytest.raises(DataError, match="record 1: missing 'output'"):
        (tmp_path / "bad.json").write_text(json.dumps([records[0], {"instruction": "x"}]))
        list(read_records(tmp_path / "bad.json"))


def test_prepared_dir_trains_only_the_replies(tmp_path, tokenizer_file):
    records = write_records(tmp_path / "r.jsonl", 60)
    long = {"instruction": "word " * 40, "output": "x"}
    with open(records, "a") as handle:
        handle.write(json.dumps(long) + "\n")
    summary = prepare_sft([records], tokenizer_file, tmp_path / "sft", seq_len=48, val_fraction=0.2, seed=3)
    assert summary.num_too_long == 1
    assert summary.num_samples["train"] + summary.num_samples["val"] == 60
    manifest = load_manifest(tmp_path / "sft")
    assert manifest.dtype == "int32" and manifest.num_skipped_documents == 1
    assert manifest.settings["num_trained_tokens"] == summary.num_trained_tokens
    heldout = [json.loads(line) for line in (tmp_path / "sft" / HELDOUT_FILE).read_text().splitlines()]
    assert len(heldout) == summary.num_samples["val"] == 12
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    data = PackedTokenDataset(tmp_path / "sft", "val")
    for row, record in zip(data.blocks(range(len(data))), heldout, strict=True):
        inputs, targets = split_batch(row[None], torch.device("cpu"))
        trained = targets[0][targets[0] != IGNORE_INDEX].tolist()
        assert tok.decode(trained, skip_special_tokens=False) == record["messages"][-1]["content"] + "<|end|>"
        assert int(inputs.min()) >= 0  # the model never sees a negative id
