"""`evaluate(source)`: held-out loss / perplexity / bits per byte, HellaSwag and samples, each beside its floors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from perkunas_ray.eval.heldout import score_heldout
from perkunas_ray.eval.hellaswag import chance_accuracy, score_hellaswag
from perkunas_ray.eval.hellaswag_data import PREPROCESSING, load_hellaswag
from perkunas_ray.eval.inputs import heldout_set, locate, open_split, recorded_data_dirs
from perkunas_ray.eval.model_scorer import model_scorer
from perkunas_ray.eval.ngram import (
    DEFAULT_SMOOTHING_K,
    bigram_scorer,
    count_training_ngrams,
    uniform_scorer,
    unigram_scorer,
)
from perkunas_ray.eval.report import EvalReport, HeldoutResult, HellaSwagResult
from perkunas_ray.eval.rows import Scorer
from perkunas_ray.eval.samples import DEFAULT_PROMPTS, SampleSettings, sample_completions
from perkunas_ray.eval.source import load_eval_model
from perkunas_ray.model_source import LoadedModel

# shared/data beside the repository (a developer checkout); a user's install passes its own file.
DEFAULT_HELLASWAG_FILE = (Path(__file__).resolve().parents[3] / "shared" / "data" / "hellaswag"
                          / "hellaswag_val_full_derived.jsonl")
DEFAULT_HELLASWAG_LIMIT = 1000
DEFAULT_LOSS_LIMIT = 1000


@dataclass
class EvalOptions:
    """What to evaluate; the defaults finish in minutes on 2 CPU cores for the small presets."""

    step: int | None = None  # a run dir's checkpoint; None: the newest
    data: str | None = None  # prepared data dir (its val split) or text files; None: the run's val split
    text_field: str = "text"  # the .jsonl / .parquet field holding a document
    loss_limit: int = DEFAULT_LOSS_LIMIT  # documents or blocks scored; 0: all
    train_data: str | None = None  # prepared data dir the floors are fitted on; None: the run's
    smoothing_k: float = DEFAULT_SMOOTHING_K
    hellaswag: str | None = str(DEFAULT_HELLASWAG_FILE)  # None: skip HellaSwag
    hellaswag_limit: int = DEFAULT_HELLASWAG_LIMIT  # 0: all items
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # empty: no samples
    sample_settings: SampleSettings = field(default_factory=SampleSettings)
    batch_size: int = 16  # rows per forward pass
    device: str = "cpu"
    dtype: str = "fp32"
    progress: bool = True


def resolve_data_dir(given: str | None, recorded: str, source: str | Path, flag: str) -> tuple[str | None, str]:
    """The data dir given, else the one the run recorded if it is found; or None and why not."""
    if given:
        return given, ""
    found = locate(recorded, source)
    if found is not None:
        return str(found), ""
    if recorded:
        return None, f"{recorded}, recorded in the run's config.json, is not found (pass {flag})"
    return None, f"no data dir known for this model (pass {flag})"


def floor_scorers(loaded: LoadedModel, train_dir: str | None, why_not: str,
                  smoothing_k: float) -> tuple[dict[str, Scorer], str]:
    """uniform always; unigram and bigram when training data is known. Returns the scorers and how they were made."""
    vocab = loaded.model.config.vocab_size
    scorers: dict[str, Scorer] = {"uniform": uniform_scorer(vocab)}
    if train_dir is None:
        return scorers, f"uniform over {vocab:,} tokens only; no unigram/bigram: {why_not}"
    counts = count_training_ngrams(open_split(train_dir, "train", loaded), vocab)
    scorers = {"bigram": bigram_scorer(counts, smoothing_k), "unigram": unigram_scorer(counts, smoothing_k),
               **scorers}
    return scorers, (f"uniform over {vocab:,} tokens; unigram and bigram fitted on the train split of {train_dir} "
                     f"({counts.num_tokens:,} tokens) with add-k smoothing, k = {smoothing_k}")


def heldout_result(loaded: LoadedModel, data: str, scorers: dict[str, Scorer], options: EvalOptions) -> HeldoutResult:
    heldout = heldout_set(loaded, data, options.text_field, options.loss_limit)
    totals = score_heldout(heldout, scorers, options.batch_size, options.progress)
    return HeldoutResult(heldout.description, heldout.num_documents, heldout.unit, heldout.num_tokens,
                         heldout.num_bytes, totals)


def hellaswag_result(loaded: LoadedModel, path: str, scorers: dict[str, Scorer],
                     options: EvalOptions) -> HellaSwagResult:
    items = load_hellaswag(path, options.hellaswag_limit)
    # The uniform floor gives every ending of a given length the same score: chance stands in for it.
    scorers = {name: scorer for name, scorer in scorers.items() if name != "uniform"}
    scores = score_hellaswag(items, loaded.tokenizer, scorers, loaded.model.config.max_seq_len, options.batch_size,
                             options.progress)
    forms = sorted({item.form for item in items})
    return HellaSwagResult(path, [f"{form}: {PREPROCESSING[form]}" for form in forms], len(items),
                           {name: result.accuracy for name, result in scores.items()}, chance_accuracy(items))


def evaluate(source: str | Path, options: EvalOptions | None = None) -> EvalReport:
    """Score the model at `source` and its floors on the same text; see EvalOptions for what is scored."""
    options = options or EvalOptions()
    loaded = load_eval_model(source, options.step, options.device, options.dtype)
    recorded_val, recorded_train = recorded_data_dirs(source)
    train_dir, no_train = resolve_data_dir(options.train_data, recorded_train, source, "--train-data DIR")
    floors, floors_text = floor_scorers(loaded, train_dir, no_train, options.smoothing_k)
    scorers = {"model": model_scorer(loaded.model), **floors}
    report = EvalReport(source=str(source), model_name=loaded.name, step=loaded.step, floors=floors_text)
    data, no_data = resolve_data_dir(options.data, recorded_val, source, "--data")
    if data is None:
        report.notes.append(f"no held-out loss: {no_data}")
    else:
        report.heldout = heldout_result(loaded, data, scorers, options)
    hellaswag = options.hellaswag
    if hellaswag == str(DEFAULT_HELLASWAG_FILE) and not DEFAULT_HELLASWAG_FILE.is_file():
        report.notes.append(f"no HellaSwag: {DEFAULT_HELLASWAG_FILE} is absent (pass --hellaswag FILE)")
    elif hellaswag is not None:
        report.hellaswag = hellaswag_result(loaded, hellaswag, scorers, options)
    if options.prompts:
        report.samples = sample_completions(loaded, options.prompts, options.sample_settings)
        report.sample_settings = options.sample_settings
    return report
