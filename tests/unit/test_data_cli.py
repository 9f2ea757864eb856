"""`perkunas prepare`: flags, summary output, and `error: ...` with exit code 2 on bad input."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from perkunas_ray.cli import prepare as prepare_cli
from perkunas_ray.data.dataset import PackedTokenDataset
from perkunas_ray.data.manifest import load_manifest

pytestmark = pytest.mark.unit


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="perkunas")
    prepare_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["prepare", *argv])


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.txt"
    path.write_text("".join(f"Tom and Sue went to shop {i}.\n<|endoftext|>\n" for i in range(60)), encoding="utf-8")
    return path


def test_run_writes_data_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["--train-data-dir", str(_corpus(tmp_path)), "--output-dir", str(tmp_path / "out"),
                   "--vocab-size", "300", "--seq-len", "16", "--blocks-per-shard", "4", "--val-fraction", "0.1",
                   "--seed", "5", "--tokenization-batch-size", "7", "--parquet-batch-rows", "3",
                   "--min-text-chars", "2", "--text-column", "text"])
    assert args.func is prepare_cli.run
    assert prepare_cli.run(args) == 0
    out = capsys.readouterr().out
    for word in ("documents:", "tokens:", "tokens/s", "blocks:", "train", "val", str(tmp_path / "out")):
        assert word in out
    manifest = load_manifest(tmp_path / "out")
    assert manifest.seq_len == 16 and manifest.settings["seed"] == 5 and len(manifest.splits["train"].shards) > 1
    assert len(PackedTokenDataset(tmp_path / "out")) == manifest.splits["train"].num_blocks


def test_several_paths_as_a_shell_glob_would_give(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _corpus(tmp_path), tmp_path / "more.txt"
    second.write_text("Another tale.\n<|endoftext|>\n", encoding="utf-8")
    args = _parse(["--train-data-dir", str(first), str(second), "--output-dir", str(tmp_path / "out"),
                   "--vocab-size", "300", "--seq-len", "8", "--val-fraction", "0"])
    assert prepare_cli.run(args) == 0
    assert load_manifest(tmp_path / "out").splits["train"].num_documents == 61


def test_delimiter_escapes(tmp_path: Path) -> None:
    assert _parse(["--delimiter", "\\n\\n"]).delimiter == "\n\n"
    assert _parse(["--delimiter", "§§"]).delimiter == "§§"
    assert _parse([]).delimiter == "<|endoftext|>"


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--train-data-dir", "{tmp}/missing.txt"], "missing.txt: no such file or folder"),
    (["--seq-len", "0"], "prepare.seq_len must be a positive integer"),
    (["--vocab-size", str(2**32 + 1)], "vocab size 4294967297 is too large"),
    (["--tokenizer-path", "{tmp}/nothing"], "nothing: tokenizer file not found"),
])
def test_errors_exit_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                    pattern: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--train-data-dir" not in argv:
        argv += ["--train-data-dir", str(_corpus(tmp_path))]
    assert prepare_cli.run(_parse([*argv, "--output-dir", str(tmp_path / "out")])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and pattern in err and "Traceback" not in err


def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--train-data-dir", str(_corpus(tmp_path)), "--output-dir", str(tmp_path / "out"), "--vocab-size", "300",
            "--seq-len", "8"]
    assert prepare_cli.run(_parse(argv)) == 0
    assert prepare_cli.run(_parse(argv)) == 2
    assert "already holds a prepared data set" in capsys.readouterr().err
    assert prepare_cli.run(_parse([*argv, "--overwrite"])) == 0


def test_subprocess_default_corpus_and_error(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "perkunas_ray.cli", "prepare", "--output-dir", str(tmp_path / "out"),
                         "--vocab-size", "512", "--seq-len", "64"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    manifest = load_manifest(tmp_path / "out")
    assert manifest.sources[0].path.endswith("tinystories_sample.txt") and manifest.splits["val"].num_blocks > 0
    bad = subprocess.run([sys.executable, "-m", "perkunas_ray.cli", "prepare", "--output-dir", str(tmp_path / "out"),
                          "--train-data-dir", str(tmp_path / "c.parquet")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
