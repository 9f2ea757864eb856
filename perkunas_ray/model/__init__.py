"""The decoder model, its attention backends, its stream shards and presets."""

from perkunas_ray.model.attention import AttentionBackend, KVCache
from perkunas_ray.model.decoder import DecoderLM, build_model, count_parameters, parameter_shapes
from perkunas_ray.model.shards import ShardSpec, build_shard, split_state_dict, stream_shard_specs

__all__ = ["AttentionBackend", "DecoderLM", "KVCache", "ShardSpec", "build_model", "build_shard",
           "count_parameters", "parameter_shapes", "split_state_dict", "stream_shard_specs"]
