"""Corpus readers (.txt, .jsonl, .parquet) and source resolution (file, folder, glob)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perkunas_ray.data import readers
from perkunas_ray.data.readers import ReaderOptions, iter_documents
from perkunas_ray.data.resources import bundled_corpus_path
from perkunas_ray.data.sources import SourceFile, resolve_sources
from perkunas_ray.errors import DataError

pytestmark = pytest.mark.unit


def _docs(path: Path, **options: object) -> list[str]:
    (source,) = resolve_sources(path)
    return list(iter_documents(source, ReaderOptions(**options)))  # type: ignore[arg-type]


def test_txt_splits_on_delimiter_and_strips(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("One story.\nTwo lines.\n<|endoftext|>\n  Second  \n<|endoftext|>\n", encoding="utf-8")
    assert _docs(path) == ["One story.\nTwo lines.", "Second", ""]


def test_txt_delimiter_straddling_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_TXT_CHUNK_CHARS", 3)
    path = tmp_path / "a.txt"
    texts = [f"doc number {i} é" for i in range(20)]
    path.write_text("<|endoftext|>".join(texts), encoding="utf-8")
    assert _docs(path) == texts


def test_txt_custom_and_empty_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("a\n\nb\n\nc\r\n", encoding="utf-8")
    assert _docs(path, delimiter="\n\n") == ["a", "b", "c"]
    assert _docs(path, delimiter="") == ["a\n\nb\n\nc"]


def test_txt_invalid_utf8_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="bad.txt.*UTF-8"):
        _docs(path)


def test_jsonl_field_blank_lines_and_null(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    rows = [{"text": "first", "id": 1}, {"text": "sécond\nline"}, {"text": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n", encoding="utf-8")
    assert _docs(path) == ["first", "sécond\nline", ""]
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    assert _docs(other, text_column="body") == ["x"]


@pytest.mark.parametrize(("lines", "pattern"), [
    (['{"text": "ok"}', "{not json"], r"bad.jsonl: line 2 is not valid JSON"),
    (['{"text": "ok"}', '{"txt": "typo"}'], r"bad.jsonl: line 2 has no field 'text' \(keys: txt\)"),
    (["[1, 2]"], r"bad.jsonl: line 1 is a JSON list"),
    (['{"text": 5}'], r"bad.jsonl: line 1 field 'text' is a int"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, lines: list[str], pattern: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        _docs(path)


def _write_parquet(path: Path, texts: list[str | None], column: str = "text", row_group_size: int = 3) -> None:
    table = pa.table({column: pa.array(texts, type=pa.string()), "n": list(range(len(texts)))})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_streams_row_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.parquet"
    texts: list[str | None] = [f"row {i} ü" for i in range(10)]
    texts[4] = None
    _write_parquet(path, texts)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("parquet must be streamed with iter_batches, not read whole")

    monkeypatch.setattr(pq, "read_table", forbidden)
    monkeypatch.setattr(pq.ParquetFile, "read", forbidden)
    assert _docs(path, parquet_batch_rows=2) == [t or "" for t in texts]


def test_parquet_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    _write_parquet(path, ["x"], column="content")
    with pytest.raises(DataError, match=r"a\.parquet.*no column 'text'.*content"):
        _docs(path)


def test_parquet_non_string_column_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(DataError, match=r"a\.parquet.*'text' has type int64"):
        _docs(path)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet.*not a readable parquet"):
        _docs(junk)


def test_resolve_folder_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.parquet", "notes.md", "sub/x.npy"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    found = resolve_sources(tmp_path)
    assert [s.path.relative_to(tmp_path).as_posix() for s in found] == ["a.jsonl", "b.txt", "sub/c.parquet"]
    assert [s.format for s in found] == ["jsonl", "txt", "parquet"]


def test_resolve_glob(tmp_path: Path) -> None:
    for name in ("a1.txt", "a2.txt", "b.txt"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    found = resolve_sources(str(tmp_path / "a*.txt"))
    assert [s.path.name for s in found] == ["a1.txt", "a2.txt"]
    with pytest.raises(DataError, match="glob matches no corpus files"):
        resolve_sources(str(tmp_path / "zz*.txt"))


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.txt: no such file or folder"):
        resolve_sources(tmp_path / "missing.txt")
    (tmp_path / "data.csv").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.csv: unsupported corpus file type '\.csv'"):
        resolve_sources(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder holds no corpus files"):
        resolve_sources(tmp_path / "empty")
    with pytest.raises(DataError, match="unsupported corpus format"):
        list(iter_documents(SourceFile(tmp_path / "data.csv", "csv"), ReaderOptions()))


def test_bundled_corpus_is_complete_stories() -> None:
    path = bundled_corpus_path()
    assert path.name == "tinystories_sample.txt" and path.is_file()
    assert (path.parent / "ATTRIBUTION.md").is_file()
    raw = path.read_bytes()
    assert 1_400_000 < len(raw) < 1_600_000 and raw.endswith(b"<|endoftext|>\n")
    docs = [d for d in _docs(path) if d]
    assert len(docs) == raw.count(b"<|endoftext|>") == 1835


def test_data_package_does_not_import_torch() -> None:
    code = "import sys, perkunas_ray.data; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
