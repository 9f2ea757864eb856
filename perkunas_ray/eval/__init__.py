"""Evaluate a trained model: held-out loss / perplexity / bits per byte, HellaSwag, samples, and their floors."""

from perkunas_ray.eval.api import DEFAULT_HELLASWAG_FILE, EvalOptions, evaluate
from perkunas_ray.eval.heldout import HeldoutSet, LossTotals, block_rows, score_heldout, text_rows
from perkunas_ray.eval.hellaswag import Accuracy, HellaSwagScores, score_hellaswag
from perkunas_ray.eval.hellaswag_data import HellaSwagItem, load_hellaswag, preprocess
from perkunas_ray.eval.model_scorer import model_scorer
from perkunas_ray.eval.ngram import bigram_scorer, count_ngrams, uniform_scorer, unigram_scorer
from perkunas_ray.eval.report import EvalReport, format_table
from perkunas_ray.eval.source import load_eval_model

__all__ = [
    "DEFAULT_HELLASWAG_FILE",
    "Accuracy",
    "EvalOptions",
    "EvalReport",
    "HeldoutSet",
    "HellaSwagItem",
    "HellaSwagScores",
    "LossTotals",
    "bigram_scorer",
    "block_rows",
    "count_ngrams",
    "evaluate",
    "format_table",
    "load_eval_model",
    "load_hellaswag",
    "model_scorer",
    "preprocess",
    "score_heldout",
    "score_hellaswag",
    "text_rows",
    "unigram_scorer",
    "uniform_scorer",
]
