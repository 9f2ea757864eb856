"""`perkunas plan` on CUDA: the prediction (logits chunk and cuBLAS workspaces included) against the allocator's peak."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.stream.plan import predict
from perkunas_ray.stream.plan_measure import measure_peak
from tests.unit.test_plan_memory import plan_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CONFIGS = {  # the LM head's chunk dominates the first, activations and boundaries the others
    "small, 4 x 512 tokens": plan_config("small", 4, 1, 512),
    "base, 2 layers per shard, 4 x 1024, 2 micro-batches": plan_config("base", 4, 2, 1024, layers_per_shard=2),
    "micro, bf16, untied, 8 x 256": plan_config("micro", 8, 1, 256, tie_embeddings=False),
}
CONFIGS["micro, bf16, untied, 8 x 256"].train.dtype = "bf16"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_predicted_peak_is_within_15_percent_of_the_allocators(name):
    cfg = CONFIGS[name]
    predicted = predict(cfg, "cuda").peak_bytes
    measured = measure_peak(cfg, torch.device("cuda"))
    print(f"{name}: predicted {predicted / 2**20:,.1f} MiB, measured {measured / 2**20:,.1f} MiB")
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


def test_the_cublas_workspace_rule_matches_what_the_allocator_holds():
    """In a fresh process: one matmul forward and one backward leave exactly the computed workspaces behind."""
    import subprocess
    import sys

    probe = ("import torch; from perkunas_ray.stream.memory import workspace_bytes; d = torch.device('cuda'); "
             "x = torch.ones(64, 64, device=d, requires_grad=True); (x @ x).sum().backward(); del x; "
             "torch.cuda.synchronize(); print(torch.cuda.memory_allocated(d), workspace_bytes(d))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    held, computed = int(out[-2]), int(out[-1])
    print(f"allocator holds {held:,} bytes after one matmul forward + backward; computed {computed:,}")
    assert abs(held - computed) <= 2**20, (held, computed)
