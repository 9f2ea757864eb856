"""Run directories and checkpoints: safetensors per shard and per optimizer state, checksummed manifests."""
