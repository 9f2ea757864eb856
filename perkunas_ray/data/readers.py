"""Stream documents out of .txt (delimited), .jsonl (one object a line) and .parquet (row batches) files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from perkunas_ray.data.sources import SourceFile
from perkunas_ray.errors import DataError

DEFAULT_DELIMITER = "<|endoftext|>"
DEFAULT_TEXT_COLUMN = "text"
_TXT_CHUNK_CHARS = 1 << 20


@dataclass(frozen=True)
class ReaderOptions:
    """How to find documents in a file: the .txt delimiter, the jsonl field / parquet column, batch rows."""

    delimiter: str = DEFAULT_DELIMITER
    text_column: str = DEFAULT_TEXT_COLUMN
    parquet_batch_rows: int = 1024


def iter_txt_documents(source: SourceFile, delimiter: str) -> Iterator[str]:
    """Yield the stripped documents of a UTF-8 text file split on `delimiter` ('' = the whole file)."""
    try:
        with open(source.path, encoding="utf-8", newline="") as handle:
            if not delimiter:
                yield handle.read().strip()
                return
            buffer = ""
            while chunk := handle.read(_TXT_CHUNK_CHARS):
                # A delimiter may straddle two chunks, so resume the search a little before the seam.
                search_from = max(0, len(buffer) - len(delimiter) + 1)
                buffer += chunk
                start = 0
                while (hit := buffer.find(delimiter, max(start, search_from))) != -1:
                    yield buffer[start:hit].strip()
                    start = hit + len(delimiter)
                buffer = buffer[start:]
            yield buffer.strip()
    except UnicodeDecodeError as exc:
        raise DataError(f"{source.path}: not valid UTF-8 text ({exc.reason} at byte {exc.start} of a chunk)") from exc


def _checked_text(value: str, source: SourceFile, line_number: int, field: str) -> str:
    """JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 text can hold; refuse it here, by line."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{source.path}: line {line_number} field {field!r} holds a lone surrogate "
                        f"({value[exc.start]!r} at character {exc.start}), which is not valid Unicode text") from exc
    return value


def iter_jsonl_documents(source: SourceFile, field: str) -> Iterator[str]:
    """Yield `obj[field]` of every JSON object line; blank lines are skipped, null values yield ''."""
    try:
        with open(source.path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{source.path}: line {line_number} is not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{source.path}: line {line_number} is a JSON {type(record).__name__}, "
                                    f"expected an object with a {field!r} field")
                if field not in record:
                    keys = ", ".join(sorted(record)) or "none"
                    raise DataError(f"{source.path}: line {line_number} has no field {field!r} (keys: {keys})")
                value = record[field]
                if value is None:
                    yield ""
                elif isinstance(value, str):
                    yield _checked_text(value, source, line_number, field)
                else:
                    raise DataError(f"{source.path}: line {line_number} field {field!r} is a "
                                    f"{type(value).__name__}, expected a string")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source.path}: not valid UTF-8 text ({exc.reason})") from exc


def iter_parquet_documents(source: SourceFile, column: str, batch_rows: int) -> Iterator[str]:
    """Yield the string column `column` of a parquet file, streamed `batch_rows` rows at a time."""
    try:
        parquet = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{source.path}: not a readable parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise DataError(f"{source.path}: parquet file has no column {column!r} "
                        f"(columns: {', '.join(schema.names) or 'none'})")
    column_type = schema.field(column).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
            or getattr(pa.types, "is_string_view", lambda _: False)(column_type)):
        raise DataError(f"{source.path}: parquet column {column!r} has type {column_type}, expected a string")
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column]):
            for value in batch.column(0).to_pylist():
                yield "" if value is None else value
    except pa.ArrowException as exc:
        raise DataError(f"{source.path}: failed reading parquet rows ({exc})") from exc


def iter_documents(source: SourceFile, options: ReaderOptions) -> Iterator[str]:
    """Yield the documents of one source file with the reader its format selects."""
    if source.format == "txt":
        return iter_txt_documents(source, options.delimiter)
    if source.format == "jsonl":
        return iter_jsonl_documents(source, options.text_column)
    if source.format == "parquet":
        return iter_parquet_documents(source, options.text_column, options.parquet_batch_rows)
    raise DataError(f"{source.path}: unsupported corpus format {source.format!r}")
