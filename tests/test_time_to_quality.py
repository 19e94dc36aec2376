"""bench/time_to_quality.py's logic: the n-gram baselines, the learning-rate sweep, where a validation curve reaches
the target, the per-seed summary and the JSON it saves. gpt-train is replaced by a stand-in whose final loss is a
known function of the learning rates, so the whole benchmark runs in a second; its real results, minutes of
training per run, are in bench/results/time_to_quality_cpu.json."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import time_to_quality as ttq  # noqa: E402


def test_ngram_cross_entropy_by_hand():
    # train streams [0 1 2 1] and [0 1] (no pair across them): unigram 0:2 1:3 2:1 of 6 tokens;
    # pairs (0,1):2 (1,2):1 (2,1):1, so 0, 1 and 2 start 2, 1 and 1 pairs
    train = [np.array([0, 1, 2, 1], dtype=np.uint16), np.array([0, 1], dtype=np.uint16)]
    got = ttq.ngram_cross_entropy(train, np.array([1, 2, 1, 1], dtype=np.uint16), vocab_size=3)
    # targets 2, 1, 1 under add-one: unigram (c + 1) / (6 + 3); bigram (c(a,b) + 1) / (c(a,.) + 3)
    assert got["unigram"] == pytest.approx(-(math.log(2 / 9) + 2 * math.log(4 / 9)) / 3)
    assert got["bigram"] == pytest.approx(-(math.log(2 / 4) + math.log(2 / 4) + math.log(1 / 4)) / 3)


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = [(100, 5.0), (200, 4.0), (300, 3.0)]
    assert ttq.tokens_to_reach(curve, 3.5) == pytest.approx(250)
    assert ttq.tokens_to_reach(curve, 4.0) == 200
    assert ttq.tokens_to_reach(curve, 6.0) == 100  # already there at the first evaluation
    assert ttq.tokens_to_reach(curve, 2.9) is None  # never reached


def run(recipe, seed, curve, seconds_per_token):
    return dict(recipe=recipe, seed=seed, tokens=curve[-1][0], curve=curve, final_val_loss=curve[-1][1],
                seconds_per_token=seconds_per_token, diverged=False)


def test_summary_ratios_and_their_spread():
    runs = [run("gpt2", 0, [(100, 5.0), (200, 4.5), (400, 4.0)], 1.0),
            run("speedrun", 0, [(100, 4.6), (200, 3.8), (400, 3.5)], 1.1),
            run("gpt2", 1, [(100, 5.0), (200, 4.6), (400, 4.2)], 2.0),
            run("speedrun", 1, [(100, 4.6), (200, 4.2), (400, 4.1)], 2.0)]
    confirm = [run("speedrun", 0, [(100, 4.5), (280, 3.9)], 1.1)]
    summary = ttq.summarize(runs, confirm)
    first, second = summary["per_seed"]
    assert first["speedrun_tokens_to_target"] == pytest.approx(100 + 0.6 / 0.8 * 100)  # 4.6 -> 3.8 crosses 4.0 at 175
    assert first["token_ratio"] == pytest.approx(175 / 400)
    assert first["cost_per_token_ratio"] == pytest.approx(1.1)
    assert first["confirm_reaches_target"] is True and first["confirm_token_ratio"] == pytest.approx(0.7)
    assert first["loss_at_equal_tokens"] == [(100, 5.0, 4.6), (200, 4.5, 3.8), (400, 4.0, 3.5)]
    assert second["token_ratio"] == pytest.approx(200 / 400)  # reaches 4.2 exactly at its second evaluation
    assert summary["token_ratio_mean"] == pytest.approx((175 / 400 + 0.5) / 2)
    assert summary["token_ratio_std"] == pytest.approx((0.5 - 175 / 400) / 2)
    assert (summary["token_ratio_min"], summary["token_ratio_max"]) == (pytest.approx(175 / 400), 0.5)
    never = ttq.summarize(runs[:2] + [run("speedrun", 1, [(100, 5.1), (400, 4.3)], 2.0), runs[2]], [])
    assert never["per_seed"][1]["token_ratio"] is None  # never reached: no mean or spread is claimed
    assert never["token_ratio_mean"] is None and never["token_ratio_std"] is None


def test_best_value_skips_diverged_runs_and_stops_when_all_diverged(capsys):
    rows = [dict(swept="learning_rate", learning_rate=1e-3, final_val_loss=5.2),
            dict(swept="learning_rate", learning_rate=3e-3, final_val_loss=5.1),
            dict(swept="learning_rate", learning_rate=1e-2, final_val_loss=None),
            dict(swept="muon_learning_rate", muon_learning_rate=0.02, learning_rate=1e-2, final_val_loss=4.0)]
    assert ttq.best_value(rows, "learning_rate") == 3e-3
    with pytest.raises(SystemExit, match="every run of the learning_rate sweep diverged"):
        ttq.best_value(rows[2:3], "learning_rate")


# the stand-in's optimum per recipe and learning rate; a rate of 0.1 or more diverges
BEST = {"gpt2": {"learning_rate": 1e-3}, "speedrun": {"muon_learning_rate": 0.05, "learning_rate": 3e-3}}


def fake_train(calls, output):
    def train(recipe, seed, out, args, max_steps, overrides=()):
        flags = dict(zip(overrides[::2], overrides[1::2]))
        lrs = {k[2:]: float(v) for k, v in flags.items() if k.endswith("learning_rate")}
        calls.append(dict(recipe=recipe, seed=seed, out=out.name, flags=flags, max_steps=max_steps,
                          sweep_rows_saved=len(json.loads(output.read_text())["sweep"]) if output.exists() else None))
        if any(v >= 0.1 for v in lrs.values()):
            return dict(recipe=recipe, seed=seed, curve=[], final_val_loss=None, diverged=True)
        arch = "gpt2" if "gpt2" in out.name else "speedrun"
        final = 4.0 + (arch == "gpt2") + 0.01 * seed + sum(math.log10(v / BEST.get(arch, {}).get(k, v)) ** 2
                                                           for k, v in lrs.items() if k in BEST[arch])
        curve = [(100, final + 1.0), (200, final + 0.5), (400, final)]
        return dict(run(recipe, seed, curve, 1.0), steps=4, parameters=1)
    return train


def test_the_benchmark_tunes_both_recipes_then_compares_the_seeds_at_their_best(tmp_path, monkeypatch):
    output, calls = tmp_path / "ttq.json", []
    monkeypatch.setattr(ttq, "ensure_data", lambda data_dir, args: None)
    monkeypatch.setattr(ttq, "ngram_baselines", lambda data_dir, recipe: dict(
        val_split=dict(unigram=6.5, bigram=5.4), evaluated=dict(unigram=6.4, bigram=5.3), evaluated_tokens=32768))
    monkeypatch.setattr(ttq, "train", fake_train(calls, output))
    result = ttq.main(["--seeds", "3", "--max_steps", "4", "--gpt2_lrs", "3e-4", "1e-3", "3e-3", "1e-1",
                       "--muon_lrs", "0.01", "0.02", "0.05", "0.1", "--speedrun_adamw_lrs", "1e-3", "3e-3", "1e-2",
                       "--confirm_ratio", "0", "--cost_rounds", "0", "--ablation", "--work_dir", str(tmp_path / "w"),
                       "--output", str(output)])
    assert result["chosen_lrs"] == BEST
    sweep = result["sweep"]
    assert [(r["recipe"], r["swept"]) for r in sweep] == [("gpt2", "learning_rate")] * 4 + [
        ("speedrun", "muon_learning_rate")] * 4 + [("speedrun", "learning_rate")] * 3
    assert sweep[3]["final_val_loss"] is None  # 0.1 diverged and was never chosen
    # Muon is swept with AdamW at the config's value, then AdamW at Muon's best
    shipped = yaml.safe_load((REPO / "configs" / "speedrun-cpu.yaml").read_text())["learning_rate"]
    assert {r["learning_rate"] for r in sweep[4:8]} == {shipped}
    assert {r["muon_learning_rate"] for r in sweep[8:]} == {0.05}
    # the JSON was rewritten after every sweep run: run k saw k rows already saved
    assert [c["sweep_rows_saved"] for c in calls[:11]] == [None] + list(range(1, 11))
    seeds = [c for c in calls[11:] if "arch" not in c["out"]]
    assert [(c["recipe"], c["seed"]) for c in seeds] == [("gpt2", 0), ("speedrun", 0), ("speedrun", 1), ("gpt2", 1),
                                                         ("gpt2", 2), ("speedrun", 2)]
    assert all(c["max_steps"] == 4 for c in calls)
    for c in seeds:
        assert {k[2:]: float(v) for k, v in c["flags"].items()} == BEST[c["recipe"]]
    assert seeds[0]["out"] == calls[1]["out"]  # seed 0 is the sweep's run at the chosen rate (reused on disk)
    # each architecture with the other recipe's optimizer and its tuned rates
    ablation = {c["out"]: c["flags"] for c in calls if "arch" in c["out"]}
    assert ablation["gpt2-arch+muon-wsd-seed0"]["--optimizer"] == "muon"
    assert float(ablation["gpt2-arch+muon-wsd-seed0"]["--muon_learning_rate"]) == 0.05
    assert float(ablation["speedrun-arch+adamw-cosine-seed0"]["--learning_rate"]) == 1e-3
    saved = json.loads(output.read_text())
    assert set(saved) >= {"command", "commit", "settings", "recipes", "ngram", "sweep", "chosen_lrs", "summary",
                          "runs", "ablation_runs"}
    summary = saved["summary"]
    # gpt2 ends at 5 + 0.01 x seed of 400 tokens; speedrun is there at its first evaluation, 100 tokens
    assert summary["token_ratio_per_seed"] == pytest.approx([100 / 400] * 3)
    assert summary["token_ratio_std"] == pytest.approx(0)
    assert set(summary["ablation_seed0"]) == set(ttq.ABLATIONS)
    assert output.with_suffix(".png").stat().st_size > 0


def test_the_two_cpu_recipes_differ_only_in_the_recipe():
    gpt2, speedrun = (yaml.safe_load((REPO / "configs" / f"{name}-cpu.yaml").read_text()) for name in ("gpt2", "speedrun"))
    same = ("n_layer", "n_head", "n_embd", "n_positions", "data_dir", "total_batch_tokens", "micro_batch_size",
            "seq_len", "max_steps", "warmup_steps", "eval_interval", "val_batches", "seed", "mixed_precision")
    assert {k: gpt2[k] for k in same} == {k: speedrun[k] for k in same}
    assert (gpt2["optimizer"], speedrun["optimizer"]) == ("adamw", "muon")
    assert (gpt2["lr_schedule"], speedrun["lr_schedule"]) == ("cosine", "wsd")


def test_sweep_from_reuses_an_earlier_sweep_and_retrains_every_seed(tmp_path, monkeypatch):
    earlier, output, calls = tmp_path / "earlier.json", tmp_path / "ttq.json", []
    rows = [dict(recipe="gpt2", swept="learning_rate", learning_rate=1e-3, final_val_loss=5.0)]
    earlier.write_text(json.dumps(dict(commit="abc123", sweep=rows, chosen_lrs=BEST)))
    monkeypatch.setattr(ttq, "ensure_data", lambda data_dir, args: None)
    monkeypatch.setattr(ttq, "ngram_baselines", lambda data_dir, recipe: dict(
        val_split=dict(unigram=6.5, bigram=5.4), evaluated=dict(unigram=6.4, bigram=5.3), evaluated_tokens=32768))
    monkeypatch.setattr(ttq, "train", fake_train(calls, output))
    common = ["--seeds", "2", "--max_steps", "4", "--confirm_ratio", "0", "--cost_rounds", "0",
              "--work_dir", str(tmp_path / "w"), "--output", str(output)]
    result = ttq.main(common + ["--sweep_from", str(earlier)])
    assert result["sweep"] == rows and result["chosen_lrs"] == BEST
    assert result["sweep_from"] == dict(path=str(earlier), commit="abc123")
    assert [(c["recipe"], c["seed"]) for c in calls] == [("gpt2", 0), ("speedrun", 0), ("speedrun", 1), ("gpt2", 1)]
    for c in calls:
        assert {k[2:]: float(v) for k, v in c["flags"].items()} == BEST[c["recipe"]]
    earlier.write_text(json.dumps(dict(sweep=rows, chosen_lrs={"gpt2": BEST["gpt2"]})))
    with pytest.raises(SystemExit, match=r"--sweep_from .*earlier.json: not a results JSON .*KeyError: 'speedrun'"):
        ttq.main(common + ["--sweep_from", str(earlier)])
