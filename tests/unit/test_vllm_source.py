"""vLLM's model dir for a run: an fp32 export cached beside the run, reused while its manifest matches the step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perkunas_ray.engine.vllm_source import CACHE_DIR, export_matches, exported_step, vllm_model_dir
from perkunas_ray.errors import ConfigError

pytestmark = pytest.mark.unit


def test_run_dir_export_is_cached_beside_the_run_and_reused(tmp_path: Path) -> None:
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path / "runs" / "tiny", vocab_size=300, max_seq_len=64, num_lines=60)
    out = vllm_model_dir(run)
    assert out.parent.parent == tmp_path / "runs" / CACHE_DIR and out.name == "step-1"
    assert export_matches(out, run, 1) and exported_step(out) == 1
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert vllm_model_dir(run) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    (out / "model.safetensors").write_bytes(b"broken")  # a size the manifest does not list: export again
    assert not export_matches(out, run, 1)
    assert vllm_model_dir(run) == out and export_matches(out, run, 1)
    assert vllm_model_dir(out) == out and exported_step(out) == 1  # a Hugging Face package is served as is
    assert not [p for p in tmp_path.rglob("*.partial")]  # no staging dir left behind


def test_other_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        vllm_model_dir(tmp_path / "missing")
    with pytest.raises(ConfigError, match="neither a run dir"):
        vllm_model_dir(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="safetensors"):
        vllm_model_dir(tmp_path)
