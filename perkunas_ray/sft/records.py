"""Read SFT records (Alpaca instruction/input/output or OpenAI messages) from JSON, JSONL or parquet, by line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from perkunas_ray.errors import DataError

FORMATS = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class SftRecord:
    """One conversation and where it came from ("file: line N"), for errors and the held-out list."""

    messages: list[dict[str, str]]
    where: str


def _text(record: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise DataError(f"{where}: missing {key!r} (an Alpaca record needs instruction and output)")
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise DataError(f"{where}: messages[{i}] must be an object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataError(f"{where}: messages[{i}] needs a string 'role' and a string 'content'")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: 'messages' has no assistant message, so nothing to learn")
    return messages


def to_messages(record: Any, where: str) -> list[dict[str, str]]:
    """The conversation of one record: its `messages`, or an Alpaca user turn (instruction, then input) and reply."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _messages(record["messages"], where)
    instruction = _text(record, "instruction", where)
    extra = _text(record, "input", where, required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(record, "output", where)}]


def _json_array(path: Path) -> Iterator[tuple[Any, str]]:
    """The records of a .json file holding one list of them."""
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if isinstance(records, list):
        yield from ((record, f"{path}: record {index}") for index, record in enumerate(records))
    else:
        raise DataError(f"{path}: a .json SFT file must hold a list of records")


def _raw_records(path: Path) -> Iterator[tuple[Any, str]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line), f"{path}: line {number}"
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from exc
    elif path.suffix == ".json":
        yield from _json_array(path)
    else:
        for index, record in enumerate(pq.read_table(path).to_pylist()):
            yield record, f"{path}: row {index}"


def read_records(path: str | Path) -> Iterator[SftRecord]:
    """Every record of one file, checked; DataError names the file and line (record / row) of a bad one."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: SFT data must be one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: SFT data file not found")
    for record, where in _raw_records(path):
        yield SftRecord(to_messages(record, where), where)
