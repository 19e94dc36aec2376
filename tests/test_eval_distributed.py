"""A real two-process `accelerate launch` run of gpt-eval gives the results of one process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ACCELERATE, free_port

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "gpt2-tokenizer").is_dir(), reason=f"shared data not found at {DATA}")


def test_two_processes_equal_one(model_dir, tmp_path):
    args = ["-m", "eval.cli", "--model", str(model_dir), "--tasks", "hellaswag,winogrande,lambada", "--data-dir", str(DATA),
            "--limit", "5", "--batch-size", "3"]
    single = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one.json")], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    # --multi_gpu on a machine without GPUs runs 2 real processes; gpt-eval then uses gloo (MULTI_CPU)
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    two = subprocess.run([*launch, *args, "--output", str(tmp_path / "two.json")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results written to") == 1  # only the main process prints and writes
    for task in ("hellaswag", "winogrande", "lambada_openai"):  # one progress bar per task, the main process's
        assert single.stderr.count(f"{task}:   0%") == two.stderr.count(f"{task}:   0%") == 1, two.stderr[-2000:]
    assert "2 process(es)" in two.stdout and "1 process(es)" in single.stdout
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two"))
    assert one.keys() == two.keys()
    for task in one:
        for metric, value in one[task].items():
            assert two[task][metric] == pytest.approx(value, rel=1e-5), (task, metric)
