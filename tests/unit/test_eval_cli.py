"""`perkunas eval` end to end on a small run dir: the table, one JSON line (also --json FILE), fixed-seed samples."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.cli import main
from tests.unit.test_eval_fixtures import eval_dirs

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

ITEMS = [
    {"activity_label": "Walking the dog", "ctx_a": "A girl walks her dog in the park.", "ctx_b": "the dog",
     "endings": ["runs after a ball.", "eats a [title] sandwich.", "flies away.", "sings a song."], "label": 0},
    {"activity_label": "Baking", "ctx": "Mom puts a cake in the oven. she", "endings": ["waits.", "swims."],
     "label": 0},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return eval_dirs(tmp_path_factory.mktemp("cli"))[0]


def test_table_and_json_line(run_dir, tmp_path, capsys):
    hellaswag = tmp_path / "h.jsonl"
    hellaswag.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    out = tmp_path / "eval.json"
    argv = ["eval", str(run_dir), "--hellaswag", str(hellaswag), "--prompt", "Once upon a time",
            "--max-new-tokens", "8", "--loss-limit", "20", "--json", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table, result = "\n".join(lines[:-1]), json.loads(lines[-1])
    assert json.loads(out.read_text()) == result
    for heading in ("held-out: val split of", "bits/byte", "hellaswag: ", "acc_token_mean", "chance", "samples"):
        assert heading in table
    assert result["step"] == 10 and result["hellaswag"]["n"] == 2 and result["hellaswag"]["chance"] == 0.375
    assert sorted(result["hellaswag"]["preprocessing"])[1].startswith("rowanz: lm-eval hellaswag preprocess")
    assert list(result["heldout"]["scores"]) == ["model", "bigram", "unigram", "uniform"]
    assert set(result["hellaswag"]["scores"]) == {"model", "bigram", "unigram"}
    assert result["hellaswag"]["scores"]["model"]["acc"]["n"] == 2
    assert main(argv) == 0  # fixed seed: the same completion again
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == result["samples"]
    assert result["samples"][0]["prompt"] == "Once upon a time" and result["samples"][0]["completion"]


def test_a_package_without_data_says_what_it_skipped(run_dir, tmp_path, capsys):
    from perkunas_ray.export import export_hf

    package = export_hf(run_dir, tmp_path / "hf")
    assert main(["eval", str(package), "--no-hellaswag", "--no-samples"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["heldout"] is None and result["step"] is None
    assert result["notes"] == ["no held-out loss: no data dir known for this model (pass --data)"]
    assert result["floors"] == ("uniform over 512 tokens only; no unigram/bigram: no data dir known for this model "
                                "(pass --train-data DIR)")
