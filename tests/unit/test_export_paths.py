"""An export never writes over its own source, and an HF index never leads the loader outside its package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perkunas_ray.cli import main
from perkunas_ray.errors import CheckpointError
from perkunas_ray.export import ExportError, export_gguf, export_hf, export_ollama, load_hf_package
from tests.unit.test_export_errors import EXPORTS
from tests.unit.test_export_fixtures import make_run_dir, tiny_export_config
from tests.unit.test_export_hf_import import _package

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("base") / "run", tiny_export_config(), train_steps=0)


@pytest.fixture
def run_dir(base_run, tmp_path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "work" / "run"))


def _tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


@pytest.mark.parametrize("kind", ["hf", "ollama"])
@pytest.mark.parametrize("where", ["equal", "inside", "above", "symlink"])
def test_an_output_dir_overlapping_the_run_dir_is_refused_even_with_overwrite(kind, where, run_dir):
    before = _tree(run_dir.parent)
    out = {"equal": run_dir, "inside": run_dir / "checkpoints", "above": run_dir.parent,
           "symlink": run_dir.parent / "link"}[where]
    if where == "symlink":
        out.symlink_to(run_dir, target_is_directory=True)
        before = _tree(run_dir.parent)
    export = {"hf": export_hf, "ollama": export_ollama}[kind]
    with pytest.raises(ExportError, match=r"--output-dir .* the export's source .*; write the export outside it"):
        export(run_dir, out, overwrite=True)
    assert _tree(run_dir.parent) == before


def test_cli_refuses_to_export_over_the_run_dir(run_dir, capsys):
    before = _tree(run_dir)
    code = main(["export", "hf", "--run-dir", str(run_dir), "--output-dir", str(run_dir), "--overwrite"])
    assert code == 2 and "is the export's source" in capsys.readouterr().err
    assert _tree(run_dir) == before


def test_a_gguf_file_inside_the_run_dir_or_the_tokenizer_dir_is_refused(run_dir, tmp_path):
    with pytest.raises(ExportError, match=r"--output .*config.json lies inside the export's source"):
        export_gguf(run_dir, run_dir / "config.json", overwrite=True)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    shutil.copyfile(run_dir / "tokenizer.json", tok_dir / "tokenizer.json")
    with pytest.raises(ExportError, match=r"lies inside the export's source .*tok"):
        export_gguf(run_dir, tok_dir / "m.gguf", tokenizer_dir=tok_dir)
    assert json.loads((run_dir / "config.json").read_text())["model"]


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_an_output_beside_the_run_dir_is_still_fine(kind, run_dir):
    EXPORTS[kind](run_dir, run_dir.parent / "run-export", overwrite=True)


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.safetensors", "sub/model.safetensors", ""])
def test_an_index_entry_outside_the_package_is_refused_by_name(tmp_path, entry):
    path, _ = _package(tmp_path / "pkg", shards=2)
    index = path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = sorted(data["weight_map"])[0]
    data["weight_map"][name] = entry
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"index.json: weight_map entry '{entry}' is not a plain file name"):
        load_hf_package(path)
