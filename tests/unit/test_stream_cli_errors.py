"""Bad input to `python -m perkunas_ray.train`: a clear `error: ...`, exit 2, and nothing overwritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from perkunas_ray.train import main
from tests.stream_helpers import small_data_dir

pytestmark = pytest.mark.unit

MODEL = ["--vocab-size", "300", "--d-model", "32", "--n-layers", "2", "--n-heads", "4", "--n-kv-heads", "2",
         "--d-ff", "48", "--max-seq-len", "32", "--micro-batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return small_data_dir(tmp_path_factory.mktemp("cli_data"))


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_error(capsys, argv: list[str], expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert expected in err, err
    return err


@pytest.mark.parametrize("mode", ["--train", "--validate"])
def test_missing_run_dir(tmp_path, capsys, mode):
    missing = tmp_path / "never-initialised"
    run_error(capsys, [mode, "--run-dir", str(missing)], "does not exist")
    assert not missing.exists()


def test_init_with_a_vocab_smaller_than_the_data(tmp_path, capsys, data_dir):
    run_dir = tmp_path / "run"
    argv = ["--init-shards", "--run-dir", str(run_dir), "--data-dir", str(data_dir), *MODEL, "--vocab-size", "100"]
    run_error(capsys, argv, "vocab")
    assert not (run_dir / "checkpoints").exists()


@pytest.fixture
def initialised(tmp_path, data_dir, capsys):
    run_dir = tmp_path / "run"
    assert main(["--init-shards", "--run-dir", str(run_dir), "--data-dir", str(data_dir), *MODEL]) == 0
    capsys.readouterr()
    return run_dir


def test_seq_len_that_contradicts_the_manifest(initialised, capsys):
    before = digest_tree(initialised)
    run_error(capsys, ["--train", "--run-dir", str(initialised), "--seq-len", "16"], "seq_len")
    assert digest_tree(initialised) == before


def test_model_change_on_an_existing_run(initialised, capsys):
    before = digest_tree(initialised)
    run_error(capsys, ["--train", "--run-dir", str(initialised), "--d-model", "64"], "d_model")
    assert digest_tree(initialised) == before


@pytest.mark.parametrize("mode", ["--train", "--validate"])
def test_corrupt_shard_file(initialised, capsys, mode):
    shard = next((initialised / "checkpoints" / "step_00000000" / "shards").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = digest_tree(initialised)
    err = run_error(capsys, [mode, "--run-dir", str(initialised)], "corrupt")
    assert shard.name in err
    assert digest_tree(initialised) == before


def test_init_refuses_an_existing_run(initialised, capsys, data_dir):
    before = digest_tree(initialised)
    run_error(capsys, ["--init-shards", "--run-dir", str(initialised), "--data-dir", str(data_dir), *MODEL],
              "refusing")
    assert digest_tree(initialised) == before


def test_secondary_device_prefetch_is_refused(tmp_path, capsys, data_dir):
    """Prefetch onto a second device is not built: the flag is refused by name, not run as cpu prefetch."""
    run_dir = tmp_path / "run"
    err = run_error(capsys, ["--init-shards", "--train", "--data-dir", str(data_dir), "--run-dir", str(run_dir), *MODEL,
                             "--prefetch-shards", "secondary-gpu"], "stream.prefetch_shards must be none or cpu")
    assert "'secondary-device'" in err
    assert not run_dir.exists()
