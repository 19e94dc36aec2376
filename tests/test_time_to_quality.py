"""bench/time_to_quality.py's arithmetic: where a validation curve reaches the target, and the per-seed summary.
(The benchmark itself trains real runs for minutes; its results are in bench/results/time_to_quality_cpu.json.)"""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import time_to_quality as ttq  # noqa: E402


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = [(100, 5.0), (200, 4.0), (300, 3.0)]
    assert ttq.tokens_to_reach(curve, 3.5) == pytest.approx(250)
    assert ttq.tokens_to_reach(curve, 4.0) == 200
    assert ttq.tokens_to_reach(curve, 6.0) == 100  # already there at the first evaluation
    assert ttq.tokens_to_reach(curve, 2.9) is None  # never reached


def run(recipe, seed, curve, seconds_per_token):
    return dict(recipe=recipe, seed=seed, tokens=curve[-1][0], curve=curve, final_val_loss=curve[-1][1],
                seconds_per_token=seconds_per_token)


def test_summary_ratios():
    runs = [run("gpt2", 0, [(100, 5.0), (200, 4.5), (400, 4.0)], 1.0),
            run("speedrun", 0, [(100, 4.6), (200, 3.8), (400, 3.5)], 1.1),
            run("gpt2", 1, [(100, 5.0), (200, 4.6), (400, 4.2)], 2.0),
            run("speedrun", 1, [(100, 5.1), (200, 4.7), (400, 4.3)], 2.0)]
    confirm = [run("speedrun", 0, [(100, 4.5), (280, 3.9)], 1.1)]
    summary = ttq.summarize(runs, confirm)
    first, second = summary["per_seed"]
    assert first["speedrun_tokens_to_target"] == pytest.approx(100 + 0.6 / 0.8 * 100)  # 4.6 -> 3.8 crosses 4.0 at 175
    assert first["token_ratio"] == pytest.approx(175 / 400)
    assert first["cost_per_token_ratio"] == pytest.approx(1.1)
    assert first["confirm_reaches_target"] is True and first["confirm_token_ratio"] == pytest.approx(0.7)
    assert first["loss_at_equal_tokens"] == [(100, 5.0, 4.6), (200, 4.5, 3.8), (400, 4.0, 3.5)]
    assert second["token_ratio"] is None  # never reached: no mean ratio is claimed
    assert summary["token_ratio_mean"] is None and summary["cost_per_token_ratio_mean"] == pytest.approx(1.05)


def test_the_two_cpu_recipes_differ_only_in_the_recipe():
    gpt2, speedrun = (yaml.safe_load((REPO / "configs" / f"{name}-cpu.yaml").read_text()) for name in ("gpt2", "speedrun"))
    same = ("n_layer", "n_head", "n_embd", "n_positions", "data_dir", "total_batch_tokens", "micro_batch_size",
            "seq_len", "max_steps", "warmup_steps", "eval_interval", "val_batches", "seed", "mixed_precision")
    assert {k: gpt2[k] for k in same} == {k: speedrun[k] for k in same}
    assert (gpt2["optimizer"], speedrun["optimizer"]) == ("adamw", "muon")
    assert (gpt2["lr_schedule"], speedrun["lr_schedule"]) == ("cosine", "wsd")
