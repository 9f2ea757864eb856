"""Our HellaSwag predictions on real items equal those computed with transformers' own forward and tokenizer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from perkunas_ray.eval import load_eval_model, load_hellaswag, model_scorer, score_hellaswag
from perkunas_ray.export import export_hf
from tests.unit.test_export_fixtures import make_run_dir, tiny_export_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

NUM_ITEMS = 200


def transformers_log_likelihoods(model, tokenizer, context: str, endings: tuple[str, ...],
                                 context_len: int) -> tuple[list[float], list[int]]:
    """lm-eval's recipe, written out against transformers: ll and token count of each " " + ending."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    lls, counts = [], []
    for ending in endings:
        whole = tokenizer(context + " " + ending, add_special_tokens=False)["input_ids"]
        continuation = whole[len(context_ids):]
        sequence = (context_ids + continuation)[-(context_len + 1):]
        with torch.no_grad():
            logits = model(torch.tensor([sequence[:-1]])).logits[0].float()
        log_probs = logits.log_softmax(-1)[-len(continuation):]
        lls.append(float(log_probs.gather(-1, torch.tensor(continuation)[:, None]).sum()))
        counts.append(len(continuation))
    return lls, counts


def test_predictions_equal_transformers_item_by_item(tmp_path, shared_data):
    cfg = tiny_export_config()
    package = export_hf(make_run_dir(tmp_path / "run", cfg, train_steps=30), tmp_path / "hf")
    items = load_hellaswag(shared_data / "hellaswag" / "hellaswag_val_full_derived.jsonl", NUM_ITEMS)
    loaded = load_eval_model(package)
    ours = score_hellaswag(items, loaded.tokenizer, {"model": model_scorer(loaded.model)}, cfg.max_seq_len,
                           batch_size=16, progress=False)["model"]

    model = transformers.AutoModelForCausalLM.from_pretrained(package, local_files_only=True,
                                                               dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(package, local_files_only=True)
    truncated = 0
    for index, item in enumerate(items):
        lls, counts = transformers_log_likelihoods(model, tokenizer, item.context, item.endings, cfg.max_seq_len)
        lls_array = np.array(lls)
        theirs = {"acc": int(np.argmax(lls_array)),
                  "acc_norm": int(np.argmax(lls_array / np.array([len(e) for e in item.endings]))),
                  "acc_token_mean": int(np.argmax(lls_array / np.array(counts)))}
        assert ours.log_likelihoods[index] == pytest.approx(lls, abs=1e-3), f"item {index}"
        assert {metric: ours.predictions[metric][index] for metric in theirs} == theirs, f"item {index}"
        truncated += max(len(tokenizer(item.context + " " + e, add_special_tokens=False)["input_ids"])
                         for e in item.endings) > cfg.max_seq_len + 1
    assert truncated > 0  # some contexts were cut from the left, so that path is compared too
