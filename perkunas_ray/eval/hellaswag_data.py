"""Read HellaSwag items from JSONL: the original rowanz fields or the derived (already preprocessed) form.

Original rowanz/hellaswag lines (`ctx_a`, `ctx_b`, `activity_label`, `endings`, `label`) are turned
into lm-evaluation-harness' query exactly as its hellaswag task does: context =
preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), endings = preprocess(ending),
where preprocess strips, turns " [title]" into ". ", removes every "[...]" tag ([header], [step],
...) and turns double spaces into single ones.

Derived lines (`activity_label`, `ctx`, `endings`, `label`; shared/data's
hellaswag_val_full_derived.jsonl) were preprocessed by their origin's extractor (the same tag
removal, without capitalising ctx_b). lm-eval's preprocess is applied to them again: context =
preprocess(activity_label + ": " + ctx); on the full validation file it changes 14 of its 50,210
texts (other "[...]" spans and double spaces the extractor left). ctx_b stays uncapitalised, so a
model's score on the derived file can differ a little from lm-eval's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perkunas_ray.errors import DataError

ROWANZ_FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
DERIVED_FIELDS = ("activity_label", "ctx", "endings", "label")
PREPROCESSING = {
    "rowanz": "lm-eval hellaswag preprocess (ctx_b capitalised; [title] -> '. '; [tags] removed; double spaces)",
    "derived": "preprocessed by its origin (ctx_b not capitalised), lm-eval preprocess applied again",
}


@dataclass(frozen=True)
class HellaSwagItem:
    context: str
    endings: tuple[str, ...]
    label: int
    form: str  # rowanz | derived


def preprocess(text: str) -> str:
    """lm-evaluation-harness' hellaswag text cleaning (brackets are WikiHow artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _field(record: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {name!r} must be a {kind.__name__}, got {value!r}")
    return value


def item_from_record(record: Any, where: str) -> HellaSwagItem:
    """Validate one parsed line; `where` (file:line) starts every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got a {type(record).__name__}")
    if all(name in record for name in ROWANZ_FIELDS):
        form = "rowanz"
        context = (_field(record, "activity_label", str, where) + ": " + _field(record, "ctx_a", str, where) + " "
                   + _field(record, "ctx_b", str, where).capitalize())
    elif all(name in record for name in DERIVED_FIELDS):
        form = "derived"
        context = _field(record, "activity_label", str, where) + ": " + _field(record, "ctx", str, where)
    else:
        missing = [n for n in ROWANZ_FIELDS if n not in record] if "ctx_a" in record or "ctx_b" in record else [
            n for n in DERIVED_FIELDS if n not in record]
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} (a HellaSwag line needs "
                        f"{', '.join(DERIVED_FIELDS)}, or ctx_a and ctx_b instead of ctx)")
    endings = _field(record, "endings", list, where)
    if len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise DataError(f"{where}: field 'endings' must be a list of at least two strings, got {endings!r}")
    label = record["label"]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # the Hugging Face copy stores labels as strings
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        raise DataError(f"{where}: field 'label' must be an index into endings (0..{len(endings) - 1}), "
                        f"got {record['label']!r}")
    cleaned = tuple(preprocess(e) for e in endings)
    if not all(cleaned):
        raise DataError(f"{where}: an ending is empty after preprocessing")
    return HellaSwagItem(context=preprocess(context), endings=cleaned, label=label, form=form)


def load_hellaswag(path: str | Path, limit: int = 0) -> list[HellaSwagItem]:
    """The first `limit` items of a HellaSwag JSONL file (0 = all); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: HellaSwag file not found")
    items: list[HellaSwagItem] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
            items.append(item_from_record(record, where))
            if len(items) == limit:
                break
    if not items:
        raise DataError(f"{path}: holds no HellaSwag items")
    return items
