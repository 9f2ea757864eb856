"""The decoder model, its stream shards and presets."""

from perkunas_ray.model.decoder import DecoderLM, build_model, count_parameters, parameter_shapes
from perkunas_ray.model.layers import KVCache
from perkunas_ray.model.shards import ShardSpec, build_shard, split_state_dict, stream_shard_specs

__all__ = ["DecoderLM", "KVCache", "ShardSpec", "build_model", "build_shard", "count_parameters",
           "parameter_shapes", "split_state_dict", "stream_shard_specs"]
