"""Bad export input fails with an error naming the thing, and never leaves or overwrites an output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from perkunas_ray.checkpoint.format import CHECKPOINTS, MANIFEST, checkpoint_dir_name, write_checkpoint
from perkunas_ray.cli import main
from perkunas_ray.errors import CheckpointError, DataError
from perkunas_ray.export import ExportError, export_gguf, export_hf, export_ollama
from perkunas_ray.export.manifest import read_export_manifest
from perkunas_ray.model import build_model, split_state_dict
from tests.unit.test_export_fixtures import make_run_dir, tiny_export_config

pytestmark = pytest.mark.unit

EXPORTS = {
    "hf": lambda run, out, **kw: export_hf(run, out, **kw),
    "gguf": lambda run, out, **kw: export_gguf(run, out.with_suffix(".gguf"), **kw),
    "ollama": lambda run, out, **kw: export_ollama(run, out, **kw),
}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("base") / "run", tiny_export_config(), train_steps=3)


@pytest.fixture
def run_dir(base_run, tmp_path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old")))


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_missing_run_dir(kind, tmp_path):
    with pytest.raises(CheckpointError, match=r"run dir .*nope does not exist"):
        EXPORTS[kind](tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.gguf").exists()


def test_cli_reports_a_missing_run_dir_and_exits_2(tmp_path, capsys):
    code = main(["export", "hf", "--run-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "error: run dir" in capsys.readouterr().err


def test_run_without_a_complete_checkpoint(run_dir, tmp_path):
    (run_dir / CHECKPOINTS / checkpoint_dir_name(3) / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export_hf(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_newest_complete_checkpoint_is_chosen_and_an_incomplete_step_is_refused(run_dir, tmp_path):
    cfg = tiny_export_config()
    state = build_model(cfg, seed=1).state_dict()
    newer = write_checkpoint(run_dir / CHECKPOINTS / checkpoint_dir_name(5), split_state_dict(cfg, state), {},
                             {"step": 5, "tokens_seen": 0})
    (newer / MANIFEST).unlink()  # a crash before the manifest: invisible
    out = export_hf(run_dir, tmp_path / "out")
    assert read_export_manifest(out)["source"]["step"] == 3
    with pytest.raises(CheckpointError, match=r"step_00000005 is incomplete: it has no manifest.json"):
        export_hf(run_dir, tmp_path / "out5", step=5)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 \(complete checkpoints: 3\)"):
        export_hf(run_dir, tmp_path / "out7", step=7)


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_checksum_mismatch_names_the_corrupt_file(kind, run_dir, tmp_path):
    shard = sorted((run_dir / CHECKPOINTS / checkpoint_dir_name(3) / "shards").iterdir())[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name} is corrupt"):
        EXPORTS[kind](run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_existing_output_is_refused_without_overwrite_and_replaced_with_it(kind, run_dir, tmp_path):
    out = tmp_path / "out"
    target = out.with_suffix(".gguf") if kind == "gguf" else out
    if kind == "gguf":
        target.write_text("keep me")
    else:
        target.mkdir()
        (target / "keep.txt").write_text("keep me")
    with pytest.raises(ExportError, match=rf"{target.name} already exists; pass --overwrite"):
        EXPORTS[kind](run_dir, out)
    assert (target.read_text() if kind == "gguf" else (target / "keep.txt").read_text()) == "keep me"
    EXPORTS[kind](run_dir, out, overwrite=True)
    assert target.stat().st_size > 1000 if kind == "gguf" else not (target / "keep.txt").exists()
    assert _leftovers(tmp_path) == []


def test_cli_refuses_an_existing_output(run_dir, tmp_path, capsys):
    (tmp_path / "m.gguf").write_text("keep me")
    code = main(["export", "gguf", "--run-dir", str(run_dir), "--output", str(tmp_path / "m.gguf")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "m.gguf").read_text() == "keep me"


@pytest.mark.parametrize("kind,dtype", [("hf", "fp64"), ("hf", "f16"), ("gguf", "bf16"), ("ollama", "q4_0")])
def test_unknown_dtype(kind, dtype, run_dir, tmp_path):
    with pytest.raises(ExportError, match=rf"--dtype must be one of .*got '{dtype}'"):
        EXPORTS[kind](run_dir, tmp_path / "out", dtype=dtype)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_cli_unknown_dtype_exits_2(run_dir, tmp_path, capsys):
    code = main(["export", "hf", "--run-dir", str(run_dir), "--output-dir", str(tmp_path / "o"), "--dtype", "int8"])
    assert code == 2 and "--dtype must be one of fp32, fp16, bf16, got 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_attention_softcap_cannot_be_exported(kind, tmp_path):
    run = make_run_dir(tmp_path / "run", tiny_export_config(attn_softcap=30.0), train_steps=0)
    with pytest.raises(ExportError, match=r"attn_softcap=30.0 \(attention logit soft-capping\)"):
        EXPORTS[kind](run, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failure_mid_write_leaves_no_output_and_keeps_the_old_one(run_dir, tmp_path, monkeypatch):
    import perkunas_ray.export.hf as hf

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    with pytest.raises(OSError, match="disk full"):
        export_hf(run_dir, tmp_path / "old", overwrite=True)
    assert (tmp_path / "old" / "config.json").read_text() == "{}" and _leftovers(tmp_path) == []


def test_missing_tokenizer_is_named(run_dir, tmp_path):
    (run_dir / "tokenizer.json").unlink()
    with pytest.raises(DataError, match=r"tokenizer file .*run/tokenizer.json does not exist"):
        export_hf(run_dir, tmp_path / "out")
    with pytest.raises(DataError, match=r"tokenizer file .*elsewhere/tokenizer.json does not exist"):
        export_hf(run_dir, tmp_path / "out", tokenizer_dir=tmp_path / "elsewhere")


def test_tokenizer_dir_overrides_and_must_fit_the_model(run_dir, tmp_path):
    other = tmp_path / "tok"
    other.mkdir()
    shutil.copyfile(run_dir / "tokenizer.json", other / "tokenizer.json")
    (run_dir / "tokenizer.json").unlink()
    out = export_hf(run_dir, tmp_path / "out", tokenizer_dir=other)
    assert read_export_manifest(out)["source"]["tokenizer"] == str((other / "tokenizer.json").resolve())
    assert (out / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()
    tok = Tokenizer(models.BPE(vocab={f"t{i}": i for i in range(600)} | {"<|endoftext|>": 600}, merges=[]))
    tok.save(str(other / "tokenizer.json"))
    with pytest.raises(DataError, match=r"has 601 tokens but the model's vocab_size is 512"):
        export_hf(run_dir, tmp_path / "out2", tokenizer_dir=other)


def test_gguf_refuses_a_tokenizer_llama_cpp_would_split_differently(run_dir, tmp_path):
    tok = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.save(str(run_dir / "tokenizer.json"))
    with pytest.raises(ExportError, match="byte-level pre-tokenizer"):
        export_gguf(run_dir, tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
