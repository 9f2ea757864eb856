"""The model as a Scorer: one forward over a padded batch, log-softmax in fp32, the targets' log-probs."""

from __future__ import annotations

import numpy as np
import torch

from perkunas_ray.eval.rows import IGNORE, Scorer
from perkunas_ray.model.decoder import DecoderLM


def model_scorer(model: DecoderLM) -> Scorer:
    """Score rows with `model.logits`; the log-softmax runs in fp32 whatever the model's dtype."""
    device = model.head_weight.device

    @torch.no_grad()
    def score(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        logits = model.logits(torch.from_numpy(inputs).to(device))  # (B, T, V)
        wanted = torch.from_numpy(targets).to(device)
        log_probs = logits.float().log_softmax(-1).gather(-1, wanted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return log_probs.masked_fill(wanted == IGNORE, 0.0).double().cpu().numpy()

    return score
