"""`perkunas sft` end to end in this process: a parent run, records, a new run that records its parent."""

from __future__ import annotations

import json
import re

import pytest

from perkunas_ray.cli import main
from perkunas_ray.reference import ReferenceTrainer
from tests.stream_helpers import small_config, small_data_dir
from tests.unit.test_sft_data import write_records

pytestmark = pytest.mark.unit
FLAGS = ["--max-steps", "2", "--micro-batch-size", "4", "--gradient-accumulation-steps", "2", "--seq-len", "32",
         "--device", "cpu", "--quiet", "--max-validation-batches", "1", "--save-every", "0"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("parent")
    ReferenceTrainer(small_config(small_data_dir(root), root / "run", max_steps=2), root / "run", verbose=False).train()
    write_records(root / "records.jsonl", 60, words_per_part=2)
    return root


@pytest.mark.parametrize("runtime", ["--in-process", "--reference"])
def test_sft_trains_a_child_that_records_its_parent(parent, tmp_path, runtime, capsys):
    run = tmp_path / "child"
    code = main(["sft", "--parent", str(parent / "run"), "--data", str(parent / "records.jsonl"),
                 "--run-dir", str(run), runtime, *FLAGS])
    assert code == 0, capsys.readouterr().err
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["checkpoint"]["parent_run_dir"] == str(parent / "run")
    assert recorded["checkpoint"]["parent_step"] == 2
    assert recorded["train"]["data_dir"] == str(run / "sft_data")
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2]
    assert any(r["event"] == "validation" for r in steps)  # the held-out split validates
    assert re.search(r"rendered \{'train': \d+, 'val': 6\} samples .* longer than seq_len 32 skipped",
                     capsys.readouterr().out)


@pytest.mark.parametrize("extra,message", [
    (["--step", "7"], "checkpoint.parent_step 7: run dir .* has no complete checkpoint at that step"),
    (["--data", "{bad}"], r"bad.jsonl: line 1: missing 'output'"),
    (["--n-layers", "5"], "model config differs from the one run dir .* was initialised with"),
])
def test_sft_refuses_bad_input_naming_it(parent, tmp_path, capsys, extra, message):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"}\n')
    args = ["sft", "--parent", str(parent / "run"), "--run-dir", str(tmp_path / "child"), "--in-process", *FLAGS]
    if "--data" not in extra:
        args += ["--data", str(parent / "records.jsonl")]
    args += [str(tmp_path / "bad.jsonl") if e == "{bad}" else e for e in extra]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
