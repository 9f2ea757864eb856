"""Bad input to `perkunas eval` fails with an error that names the file, line or field, and the CLI exits 2."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.cli import main
from perkunas_ray.data.tokenizer import train_tokenizer
from perkunas_ray.errors import CheckpointError, ConfigError, DataError
from perkunas_ray.eval import EvalOptions, evaluate, load_hellaswag
from tests.unit.test_eval_fixtures import prepared_data, trained_run_dir, two_step_run_dir
from tests.unit.test_export_fixtures import story_lines

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

QUIET = dict(hellaswag=None, prompts=(), progress=False)


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


GOOD = {"activity_label": "Cooking", "ctx": "A man cuts onions. he", "endings": ["cries.", "sings."], "label": 0}


def test_missing_hellaswag_file(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope.jsonl'}: HellaSwag file not found"):
        load_hellaswag(tmp_path / "nope.jsonl")


def test_wrong_fields_name_the_file_and_line(tmp_path):
    path = write_lines(tmp_path / "h.jsonl", [GOOD, {"activity_label": "x", "context": "y", "endings": [], "label": 0}])
    with pytest.raises(DataError, match=r"h\.jsonl:2: missing field\(s\) ctx"):
        load_hellaswag(path)
    rowanz_without_ctx_b = {"activity_label": "x", "ctx_a": "A man.", "endings": ["a", "b"], "label": 0}
    path = write_lines(tmp_path / "h.jsonl", [GOOD, rowanz_without_ctx_b])
    with pytest.raises(DataError, match=r"h\.jsonl:2: missing field\(s\) ctx_b"):
        load_hellaswag(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"label": 2}, "field 'label' must be an index into endings"),
    ({"endings": "cries."}, "field 'endings' must be a list"),
    ({"endings": ["cries."]}, "at least two strings"),
    ({"ctx": 3}, "field 'ctx' must be a str"),
    ({"endings": ["cries.", "[title]"]}, "an ending is empty after preprocessing"),
])
def test_bad_values_name_the_field(tmp_path, change, message):
    path = write_lines(tmp_path / "h.jsonl", [{**GOOD, **change}])
    with pytest.raises(DataError, match=rf"h\.jsonl:1: .*{message}"):
        load_hellaswag(path)


def test_bad_json_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(DataError, match=r"h\.jsonl:2: not valid JSON"):
        load_hellaswag(path)


def test_token_shards_of_another_tokenizer_are_refused(tmp_path):
    run_dir = trained_run_dir(tmp_path / "run", train_steps=0)
    other = tmp_path / "other_tokenizer.json"
    train_tokenizer(story_lines()[:100], vocab_size=300).save(str(other))
    data_dir = prepared_data(tmp_path, other)
    for options in (EvalOptions(data=str(data_dir), **QUIET), EvalOptions(train_data=str(data_dir), **QUIET)):
        with pytest.raises(DataError, match="another tokenizer than the model's .*tokenizer sha256"):
            evaluate(run_dir, options)


def test_missing_step_lists_the_steps_there(tmp_path):
    run_dir = two_step_run_dir(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no complete checkpoint at step 3 .*steps 0, 5"):
        evaluate(run_dir, EvalOptions(step=3, **QUIET))


def test_step_of_a_package_is_refused(tmp_path):
    from perkunas_ray.export import export_hf

    package = export_hf(trained_run_dir(tmp_path / "run", train_steps=0), tmp_path / "hf")
    with pytest.raises(ConfigError, match="Hugging Face package"):
        evaluate(package, EvalOptions(step=1, **QUIET))


def test_cli_prints_the_error_and_exits_2(tmp_path, capsys):
    run_dir = trained_run_dir(tmp_path / "run", train_steps=0)
    assert main(["eval", str(tmp_path / "missing_run")]) == 2
    assert "error: model source" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--data", str(tmp_path / "held.txt"), "--no-samples", "--no-hellaswag"]) == 2
    assert f"error: {tmp_path / 'held.txt'}: no such file or folder" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--hellaswag", str(tmp_path / "h.jsonl"), "--no-samples"]) == 2
    assert "HellaSwag file not found" in capsys.readouterr().err


def test_a_recorded_data_dir_that_moved_is_named(tmp_path):
    run_dir = two_step_run_dir(tmp_path / "run")
    config = json.loads((run_dir / "config.json").read_text())
    config["data"] = {"data_dir": "gone/data"}
    (run_dir / "config.json").write_text(json.dumps(config))
    report = evaluate(run_dir, EvalOptions(**QUIET))
    assert report.heldout is None
    assert report.notes == ["no held-out loss: gone/data, recorded in the run's config.json, is not found (pass --data)"]
    assert report.floors.endswith("gone/data, recorded in the run's config.json, is not found (pass --train-data DIR)")
