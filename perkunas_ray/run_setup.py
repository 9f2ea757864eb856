"""What every trainer does before its first step: find and open the data, check it against the config, seed the run dir."""

from __future__ import annotations

import json
import resource
import shutil
import sys
from pathlib import Path

from perkunas_ray.checkpoint.format import save_run_config
from perkunas_ray.config import RunConfig
from perkunas_ray.data import PackedTokenDataset, prepare_corpus
from perkunas_ray.errors import ConfigError

DEFAULT_RUNS = Path("runs")  # where the main job puts its run dirs and the prepared bundled corpus


def bundled_data_dir(cfg: RunConfig, root: Path = DEFAULT_RUNS) -> Path:
    """The bundled corpus prepared for this model's context and vocabulary (reused once prepared)."""
    seq_len, vocab_size = cfg.model.max_seq_len, cfg.model.vocab_size
    out = root / "data" / f"bundled-seq{seq_len}-v{vocab_size}"
    if not (out / "manifest.json").is_file():
        print(f"preparing the bundled corpus in {out} ...", flush=True)
        prepare_corpus(out, seq_len=seq_len, vocab_size=vocab_size, show_progress=False, overwrite=True)
    return out


def open_datasets(cfg: RunConfig) -> tuple[PackedTokenDataset, PackedTokenDataset | None]:
    """Train and validation splits, after checking that the data agrees with the model and train configs."""
    if not cfg.train.data_dir:
        raise ConfigError("train.data_dir must be set to a directory prepared by `perkunas prepare`")
    train = PackedTokenDataset(cfg.train.data_dir, "train")
    check_data_matches(cfg, train)
    val_dir = cfg.train.val_data_dir or cfg.train.data_dir
    val: PackedTokenDataset | None = None
    try:
        val = PackedTokenDataset(val_dir, "val")
    except Exception:  # a data dir without a validation split still trains; validation is skipped
        if cfg.train.val_data_dir:
            raise
    if val is not None and len(val) > 0:
        check_data_matches(cfg, val)
    return train, val if val is not None and len(val) > 0 else None


def check_data_matches(cfg: RunConfig, data: PackedTokenDataset) -> None:
    manifest_file = data.data_dir / "manifest.json"
    if cfg.train.seq_len and cfg.train.seq_len != data.seq_len:
        raise ConfigError(f"train.seq_len is {cfg.train.seq_len} but {manifest_file} was packed with "
                          f"seq_len {data.seq_len}; re-run `perkunas prepare --seq-len {cfg.train.seq_len}` or "
                          f"set seq_len to {data.seq_len}")
    if data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"model.max_seq_len is {cfg.model.max_seq_len} but {manifest_file} has seq_len "
                          f"{data.seq_len}")
    if data.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size is {cfg.model.vocab_size} but {manifest_file} was tokenized with a "
                          f"vocab of {data.vocab_size}")


def seed_run_dir(run_dir: Path, cfg: RunConfig, data: PackedTokenDataset) -> None:
    """Write config.json and copy the tokenizer, so the run dir alone suffices for export and serving."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir, cfg, extra={"data": {"data_dir": str(data.data_dir), "seq_len": data.seq_len,
                                                  "vocab_size": data.vocab_size,
                                                  "tokenizer_sha256": data.manifest.tokenizer_sha256}})
    if data.tokenizer_path.is_file():
        shutil.copyfile(data.tokenizer_path, run_dir / "tokenizer.json")


def check_run_dir_matches(run_dir: Path, data: PackedTokenDataset) -> None:
    """A resumed run must read data tokenized like the data it started on."""
    config = run_dir / "config.json"
    if not config.is_file():
        return
    recorded = json.loads(config.read_text()).get("data", {})
    if recorded.get("tokenizer_sha256") not in (None, data.manifest.tokenizer_sha256):
        raise ConfigError(f"{data.data_dir} was tokenized with a different tokenizer than the run in {run_dir} "
                          f"(tokenizer sha256 differs)")


def rss_bytes() -> int:
    """Peak resident set size of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
