"""Time to quality on CPU: the GPT-2 recipe against the faster one, same model size, same tokens, several seeds.

Both recipes are shipped configs trained by `gpt-train` itself: configs/gpt2-cpu.yaml (AdamW, warmup + cosine,
GPT-2's architecture) and configs/speedrun-cpu.yaml (Muon + AdamW, warmup-stable-decay, RMSNorm/SwiGLU/RoPE with
QK-norm and an untied head, which exports to Qwen3ForCausalLM). The data is FineWeb-Edu's offline stand-in under a
2048-token BPE trained on it, so that the embedding does not dominate a 4-layer, width-128 model. Runs alternate
recipe by recipe within each seed (the order flips every seed) so that the shared machine's load hits both alike.

Reported, per seed and on average: the tokens the new recipe needs to reach the GPT-2 recipe's final validation
loss (read off its validation curve, linearly interpolated between evaluations), as a ratio of the GPT-2 recipe's
tokens; both recipes' validation loss at equal tokens; and the wall-clock training seconds per token of each
(evaluation excluded), over whole runs and, less disturbed by the shared machine's load, as the fastest quarter of
single steps timed in short alternating runs (`--cost_rounds`). A warmup-stable-decay run only reaches its best loss in its final decay, so the crossing
read off a full-length run overstates what the new recipe needs; `--confirm_ratio` therefore also trains it with
a horizon of that fraction of the tokens and reports its final loss against the target. `--ablation` adds, for
seed 0, each recipe's architecture trained with the other's optimizer and schedule.

    nice python bench/time_to_quality.py --seeds 3 --ablation --save   # -> bench/results/time_to_quality_cpu.json, .png
"""

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Optional

import yaml
from transformers import HfArgumentParser

import atomic_io
from bench_output import SAVE_HELP, results_path
from train_throughput import git_commit

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"gpt2": REPO / "configs" / "gpt2-cpu.yaml", "speedrun": REPO / "configs" / "speedrun-cpu.yaml"}
# --ablation: each recipe's architecture with the other's optimizer and schedule (seed 0), to see which half helps
ABLATIONS = {
    "gpt2-arch+muon-wsd": ("gpt2", ["--optimizer", "muon", "--lr_schedule", "wsd", "--decay_ratio", "0.4",
                                     "--min_lr_ratio", "0", "--muon_learning_rate", "0.02", "--weight_decay", "0"]),
    "speedrun-arch+adamw-cosine": ("speedrun", ["--optimizer", "adamw", "--lr_schedule", "cosine",
                                                "--min_lr_ratio", "0.1", "--weight_decay", "0.1"]),
}


@dataclass
class TimeToQualityArguments:
    seeds: int = field(default=3, metadata={"help": "training seeds (model init and data order) per recipe"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "override both recipes' max_steps"})
    confirm_ratio: float = field(
        default=0.7, metadata={"help": "also train the new recipe over this fraction of the steps (0: skip)"}
    )
    ablation: bool = field(default=False, metadata={"help": f"also train {sorted(ABLATIONS)} (seed 0)"})
    cost_rounds: int = field(
        default=4, metadata={"help": "short alternating runs of each recipe timing single steps (0: skip)"}
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads of each training run"})
    dataset: str = field(default=str(REPO.parent / "shared" / "data" / "fineweb-edu-mini"),
                         metadata={"help": "FineWeb-Edu-like dataset to tokenize when the recipes' data_dir is empty"})
    vocab_size: int = field(default=2048, metadata={"help": "BPE vocabulary trained on the dataset"})
    work_dir: str = field(default="out/time_to_quality", metadata={"help": "folder for the training runs"})
    output: Optional[str] = field(default=None, metadata={"help": "JSON results (the plot goes next to it as .png)"})
    save: bool = field(default=False, metadata={"help": SAVE_HELP})


def ensure_data(data_dir: Path, args: TimeToQualityArguments):
    if (data_dir / "manifest.json").is_file():
        return
    subprocess.run(
        ["gpt-tokenize", "--dataset", args.dataset, "--name", "sample-10BT", "--output", str(data_dir),
         "--train-tokenizer", "--vocab-size", str(args.vocab_size), "--shard-size", "200000", "--val-tokens", "65536",
         "--workers", "1"],
        check=True, cwd=REPO,
    )


def train(recipe: str, seed: int, out: Path, args: TimeToQualityArguments, max_steps: Optional[int],
          overrides: tuple = ()) -> dict:
    """One gpt-train run; its validation curve, training seconds per token and parameter count."""
    if not (out / "final").is_dir():  # a finished run is reused: the benchmark resumes after an interruption
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(RECIPES[recipe]), "--seed", str(seed),
               "--output_dir", str(out)]
        if max_steps is not None:
            cmd += ["--max_steps", str(max_steps)]
        cmd += overrides
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"time_to_quality: {shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
        (out / "stdout.txt").write_text(done.stdout)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recipe_settings = yaml.safe_load(RECIPES[recipe].read_text())
    tokens_per_step = recipe_settings["total_batch_tokens"]
    # tokens_per_sec of a log line covers the steps since the previous line, evaluation excluded
    seconds, last_step = 0.0, 0
    for r in records:
        if "tokens_per_sec" in r:
            seconds += (r["step"] - last_step) * tokens_per_step / r["tokens_per_sec"]
            last_step = r["step"]
    return dict(
        recipe=recipe, seed=seed, steps=records[-1]["step"], tokens=records[-1]["tokens"],
        curve=[(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r],
        train_seconds=seconds, seconds_per_token=seconds / records[-1]["tokens"],
        parameters=parameters(out), final_val_loss=records[-1]["val_loss"],
    )


def step_costs(recipe: str, out: Path, args: TimeToQualityArguments, steps: int = 8) -> list[float]:
    """Seconds per token of each step after the first of a short gpt-train run with a log line every step."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(RECIPES[recipe]), "--output_dir", str(out),
           "--max_steps", str(steps), "--eval_interval", "0", "--log_interval", "1", "--save_interval", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"time_to_quality: {shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [1.0 / r["tokens_per_sec"] for r in records[1:]]


def parameters(out: Path) -> int:
    """Parameters of the exported model (padded vocabulary rows included, tied weights once)."""
    from math import prod

    from safetensors import safe_open

    with safe_open(str(out / "final" / "model.safetensors"), "pt") as f:
        return sum(prod(f.get_slice(k).get_shape()) for k in f.keys())


def tokens_to_reach(curve: list, target: float) -> Optional[float]:
    """First token count where the validation loss reaches `target`, interpolated between evaluations."""
    previous = None
    for tokens, loss in curve:
        if loss <= target:
            if previous is None:
                return float(tokens)
            t0, l0 = previous
            return t0 + (l0 - target) / (l0 - loss) * (tokens - t0)
        previous = (tokens, loss)
    return None


def token_ratio(run: dict, base: dict) -> Optional[float]:
    """The tokens `run` needs to reach `base`'s final validation loss, over `base`'s tokens (None: never)."""
    reached = tokens_to_reach(run["curve"], base["final_val_loss"])
    return None if reached is None else reached / base["tokens"]


def summarize(runs: list[dict], confirms: list[dict]) -> dict:
    per_seed = []
    for seed in sorted({r["seed"] for r in runs}):
        base = next(r for r in runs if r["recipe"] == "gpt2" and r["seed"] == seed)
        new = next(r for r in runs if r["recipe"] == "speedrun" and r["seed"] == seed)
        target = base["final_val_loss"]
        reached = tokens_to_reach(new["curve"], target)
        row = dict(seed=seed, target_val_loss=target, gpt2_tokens=base["tokens"], speedrun_tokens_to_target=reached,
                   token_ratio=token_ratio(new, base),
                   speedrun_final_val_loss=new["final_val_loss"],
                   cost_per_token_ratio=new["seconds_per_token"] / base["seconds_per_token"],
                   loss_at_equal_tokens=[(t, lb, ln) for (t, lb), (_, ln) in zip(base["curve"], new["curve"])])
        confirm = next((c for c in confirms if c["seed"] == seed), None)
        if confirm is not None:
            row.update(confirm_tokens=confirm["tokens"], confirm_token_ratio=confirm["tokens"] / base["tokens"],
                       confirm_final_val_loss=confirm["final_val_loss"], confirm_reaches_target=confirm["final_val_loss"] <= target)
        per_seed.append(row)
    ratios = [r["token_ratio"] for r in per_seed if r["token_ratio"] is not None]
    summary = dict(
        token_ratio_mean=mean(ratios) if len(ratios) == len(per_seed) else None,
        token_ratio_per_seed=[r["token_ratio"] for r in per_seed],
        cost_per_token_ratio_mean=mean(r["cost_per_token_ratio"] for r in per_seed),
        gpt2_final_val_loss_mean=mean(r["target_val_loss"] for r in per_seed),
        speedrun_final_val_loss_mean=mean(r["speedrun_final_val_loss"] for r in per_seed),
        per_seed=per_seed,
    )
    if confirms:
        summary["confirm_token_ratio"] = per_seed[0].get("confirm_token_ratio")
        summary["confirm_reaches_target"] = [r.get("confirm_reaches_target") for r in per_seed]
        summary["confirm_final_val_loss_mean"] = mean(c["final_val_loss"] for c in confirms)
    return summary


def plot(runs: list[dict], confirms: list[dict], ablations: list[dict], summary: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
    colors = {"gpt2": "tab:blue", "speedrun": "tab:red"}
    labels = {"gpt2": "GPT-2 recipe (AdamW, cosine)", "speedrun": "speedrun recipe (Muon, WSD, QK-norm)"}
    for r in runs:
        tokens, losses = zip(*r["curve"])
        ax.plot([t / 1e3 for t in tokens], losses, color=colors[r["recipe"]], alpha=0.8, lw=1,
                label=labels.pop(r["recipe"], None))
    for i, c in enumerate(confirms):
        tokens, losses = zip(*c["curve"])
        label = f"speedrun over {summary['confirm_token_ratio']:.2f}x the tokens" if i == 0 else None
        ax.plot([t / 1e3 for t in tokens], losses, color="tab:orange", ls="--", lw=1, label=label)
    for r, color in zip(ablations, ("tab:green", "tab:purple")):
        tokens, losses = zip(*r["curve"])
        ax.plot([t / 1e3 for t in tokens], losses, color=color, ls="-.", lw=1, label=f"{r['recipe']} (seed 0)")
    ax.axhline(summary["gpt2_final_val_loss_mean"], color="gray", ls=":", lw=1, label="GPT-2 recipe's final val loss")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("validation loss")
    low = min(min(l for _, l in r["curve"]) for r in runs + confirms)
    ax.set_ylim(low - 0.1, low + 2.0)
    title = "time to quality on CPU"
    if summary["token_ratio_mean"] is not None:
        title += f": {summary['token_ratio_mean']:.2f}x the tokens, {summary['cost_per_token_ratio_mean']:.2f}x the cost per token"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(TimeToQualityArguments).parse_args_into_dataclasses(args=argv)
    data_dirs = {yaml.safe_load(p.read_text())["data_dir"] for p in RECIPES.values()}
    if len(data_dirs) != 1:
        sys.exit(f"time_to_quality: the recipes must share one data_dir, got {sorted(data_dirs)}")
    ensure_data(REPO / data_dirs.pop(), args)
    work = Path(args.work_dir)
    runs, confirms = [], []
    base_steps = args.max_steps or yaml.safe_load(RECIPES["gpt2"].read_text())["max_steps"]
    for seed in range(args.seeds):
        order = ["gpt2", "speedrun"] if seed % 2 == 0 else ["speedrun", "gpt2"]
        for recipe in order:
            print(f"seed {seed}: {recipe}", flush=True)
            runs.append(train(recipe, seed, work / f"{recipe}-seed{seed}", args, args.max_steps))
        if args.confirm_ratio:
            steps = round(args.confirm_ratio * base_steps)
            print(f"seed {seed}: speedrun over {steps} steps", flush=True)
            confirms.append(train("speedrun", seed, work / f"speedrun-{steps}steps-seed{seed}", args, steps))
    ablations = []
    if args.ablation:
        for name, (recipe, overrides) in ABLATIONS.items():
            print(f"seed 0: {name}", flush=True)
            ablations.append(dict(train(recipe, 0, work / f"{name}-seed0", args, args.max_steps, overrides), recipe=name))
    summary = summarize(runs, confirms)
    if args.cost_rounds:
        # the machine is shared: alternate short runs, and take each recipe's fastest steps as its cost
        costs = {"gpt2": [], "speedrun": []}
        for i in range(args.cost_rounds):
            for recipe in (costs if i % 2 == 0 else reversed(list(costs))):
                print(f"cost round {i}: {recipe}", flush=True)
                costs[recipe] += step_costs(recipe, work / f"cost-{recipe}", args)
        best = {k: sorted(v)[: max(1, len(v) // 4)] for k, v in costs.items()}  # the fastest quarter of the steps
        summary["step_cost"] = dict(
            seconds_per_token_fastest_quarter={k: mean(v) for k, v in best.items()},
            seconds_per_token_median={k: sorted(v)[len(v) // 2] for k, v in costs.items()},
            steps_timed={k: len(v) for k, v in costs.items()},
            cost_per_token_ratio=mean(best["speedrun"]) / mean(best["gpt2"]),
        )
    if ablations:
        base = next(r for r in runs if r["recipe"] == "gpt2" and r["seed"] == 0)
        summary["ablation_seed0"] = {
            # not interleaved with the baseline: their wall-clock cost is not comparable, only their losses
            r["recipe"]: dict(final_val_loss=r["final_val_loss"], token_ratio=token_ratio(r, base))
            for r in ablations
        }
    output = results_path("time_to_quality_cpu.json", args.output, args.save)
    result = dict(
        command="nice python bench/time_to_quality.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        commit=git_commit(), machine=dict(cpu=platform.processor() or platform.machine(), threads=args.threads,
                                          cores=os.cpu_count(), load_average=os.getloadavg()),
        settings=asdict(args), recipes={k: yaml.safe_load(p.read_text()) for k, p in RECIPES.items()},
        summary=summary, runs=runs, confirm_runs=confirms, ablation_runs=ablations,
    )
    atomic_io.write_json(output, result, indent=1)
    plot(runs, confirms, ablations, summary, output.with_suffix(".png"))
    print(f"{'seed':>4} | {'target':>7} | {'tokens to target':>16} | {'ratio':>5} | {'cost/token':>10} | {'confirm':>7}")
    for r in summary["per_seed"]:
        ratio = "never" if r["token_ratio"] is None else f"{r['token_ratio']:.3f}"
        reached = "-" if r["speedrun_tokens_to_target"] is None else f"{r['speedrun_tokens_to_target']:,.0f}"
        confirm = f"{r['confirm_final_val_loss']:.4f}" if "confirm_final_val_loss" in r else "-"
        print(f"{r['seed']:>4} | {r['target_val_loss']:.4f} | {reached:>16} | {ratio:>5} | {r['cost_per_token_ratio']:>10.3f} | {confirm:>7}")
    if "step_cost" in summary:
        cost = summary["step_cost"]
        print(f"cost per token (fastest quarter of {cost['steps_timed']['gpt2']} alternating steps each): "
              f"speedrun / gpt2 = {cost['cost_per_token_ratio']:.3f}")
    print(f"results in {output} and {output.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
