"""Supervised fine-tuning data: chat records rendered with the product's template into label-masked blocks."""

from perkunas_ray.sft.prepare import SftSummary, prepare_sft
from perkunas_ray.sft.records import SftRecord, read_records
from perkunas_ray.sft.render import render_sample

__all__ = ["SftRecord", "SftSummary", "prepare_sft", "read_records", "render_sample"]
