"""Benchmarks write to out/bench/ by default; the tracked reference results in bench/results/ change only with
--save or an explicit --output there."""

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the scripts import their neighbours, as when run from bench/
import bench_output  # noqa: E402
import generate  # noqa: E402


def _hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_results_path_rules():
    assert bench_output.results_path("x.json") == Path("out/bench/x.json")
    assert bench_output.results_path("x.json", save=True) == REPO / "bench" / "results" / "x.json"
    assert bench_output.results_path("x.json", "here/y.json", save=True) == Path("here/y.json")


def test_a_default_run_leaves_the_tracked_results_alone(tmp_path, monkeypatch):
    before = _hashes(REPO / "bench" / "results")
    monkeypatch.chdir(tmp_path)
    generate.main(["--preset", "tiny", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--vocab_size", "256",
                   "--threads", "1", "--batch_sizes", "1", "--prompt_len", "4", "--new_tokens", "2", "--rounds", "1"])
    assert (tmp_path / "out" / "bench" / "generate_cpu_tiny.json").is_file()
    assert _hashes(REPO / "bench" / "results") == before
