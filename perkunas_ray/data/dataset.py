"""Memory-mapped, checksum-verified access to the packed token blocks of one split of a prepared data dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perkunas_ray.data.manifest import SPLITS, DataManifest, load_manifest, manifest_path
from perkunas_ray.data.sources import file_sha256
from perkunas_ray.errors import ConfigError, DataError


class PackedTokenDataset:
    """The blocks of `split`, each seq_len + 1 token ids; shards are np.load(mmap_mode='r') views."""

    def __init__(self, data_dir: str | Path, split: str = "train", verify: bool = True) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.data_dir = manifest_path(data_dir).parent
        self.split = split
        self.manifest: DataManifest = load_manifest(self.data_dir)
        if split not in self.manifest.splits:
            raise DataError(f"{manifest_path(self.data_dir)}: has no {split!r} split")
        if verify:
            self._check_tokenizer()
        shards = self.manifest.splits[split].shards
        self._arrays = [self._open_shard(s.file_name, s.num_blocks, s.sha256, verify) for s in shards]
        self._offsets = np.cumsum([0] + [s.num_blocks for s in shards], dtype=np.int64)

    def _check_tokenizer(self) -> None:
        """Token ids mean nothing with another tokenizer: the file must be the one the manifest hashed."""
        path = self.tokenizer_path
        if not path.is_file():
            raise DataError(f"{path}: tokenizer listed in {manifest_path(self.data_dir)} is missing")
        got = file_sha256(path)
        if got != self.manifest.tokenizer_sha256:
            raise DataError(f"{path}: sha256 mismatch, manifest expects {self.manifest.tokenizer_sha256}, file has "
                            f"{got} (the tokenizer was changed; re-run `perkunas prepare`)")

    def _open_shard(self, file_name: str, num_blocks: int, sha256: str, verify: bool) -> np.ndarray:
        path = self.data_dir / file_name
        if not path.is_file():
            raise DataError(f"{path}: shard listed in the manifest is missing")
        if verify:
            got = file_sha256(path)
            if got != sha256:
                raise DataError(f"{path}: sha256 mismatch, manifest expects {sha256}, file has {got} "
                                f"(the shard is corrupt or was changed; re-run `perkunas prepare`)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy shard ({exc})") from exc
        expected = (num_blocks, self.manifest.block_len)
        if array.shape != expected:
            raise DataError(f"{path}: shape mismatch, manifest expects {expected}, file has {array.shape}")
        if array.dtype != self.manifest.np_dtype:
            raise DataError(f"{path}: dtype mismatch, manifest expects {self.manifest.dtype}, file has {array.dtype}")
        return array

    @property
    def num_blocks(self) -> int:
        return int(self._offsets[-1])

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer.json these token ids come from."""
        return self.data_dir / self.manifest.tokenizer_file

    def __len__(self) -> int:
        return self.num_blocks

    def block(self, index: int) -> np.ndarray:
        """Block `index` (0 <= index < len), a read-only array of seq_len + 1 token ids in the shard dtype."""
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block index {index} out of range for {self.num_blocks} {self.split} blocks")
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self._arrays[shard][index - int(self._offsets[shard])]

    def blocks(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Gather blocks into a new int64 array of shape (len(indices), seq_len + 1)."""
        out = np.empty((len(indices), self.manifest.block_len), dtype=np.int64)
        for row, index in enumerate(indices):
            out[row] = self.block(int(index))
        return out
