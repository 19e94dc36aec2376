"""Time to quality on CPU: the GPT-2 recipe against the faster one, both tuned alike, same model size and tokens.

Both recipes are shipped configs trained by `gpt-train` itself: configs/gpt2-cpu.yaml (AdamW, warmup + cosine,
GPT-2's architecture) and configs/speedrun-cpu.yaml (Muon + AdamW, warmup-stable-decay, RMSNorm/SwiGLU/RoPE with
QK-norm and an untied head, which exports to Qwen3ForCausalLM). The data is FineWeb-Edu's offline stand-in under a
2048-token BPE trained on it, so that the embedding does not dominate a 4-layer, width-128 model.

Before comparing, each recipe is tuned the same way on seed 0: a learning-rate grid per optimizer (AdamW's for the
GPT-2 recipe; Muon's, then AdamW's with Muon's best, for the speedrun recipe: one at a time, the other at its
config value until swept), each chosen by final validation loss. The seeds then train each recipe at its best
(seed 0 is the sweep's run), alternating recipe by recipe (the order flips every seed). The validation tokens'
unigram and add-one bigram cross-entropy (counted on the training split) are printed beside the losses: a recipe
that ends above the bigram level has learnt less than one token of context buys.

Reported, per seed and as mean, std, min and max: the tokens the new recipe needs to reach the GPT-2 recipe's final
validation loss (read off its validation curve, linearly interpolated between evaluations), as a ratio of the
GPT-2 recipe's tokens; both recipes' validation loss at equal tokens; and the wall-clock training seconds per
token of each (evaluation excluded), over whole runs and, less disturbed by the shared machine's load, as the
fastest quarter of single steps timed in short alternating runs (`--cost_rounds`). A warmup-stable-decay run only
reaches its best loss in its final decay, so the crossing read off a full-length run overstates what the new
recipe needs; `--confirm_ratio` therefore also trains it with a horizon of that fraction of the tokens and
reports its final loss against the target. `--ablation` adds, for seed 0, each recipe's architecture trained with
the other's optimizer, schedule and tuned learning rates. The JSON is rewritten after every run, so an
interrupted benchmark leaves what it finished (and a rerun reuses the finished runs in --work_dir); `--sweep_from`
takes the sweep of an earlier results JSON instead of running it again.

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
from statistics import mean, pstdev
from typing import Optional

import numpy as np
import yaml
from transformers import HfArgumentParser

import atomic_io
import token_shards
from bench_output import SAVE_HELP, results_path
from train_throughput import git_commit

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"gpt2": REPO / "configs" / "gpt2-cpu.yaml", "speedrun": REPO / "configs" / "speedrun-cpu.yaml"}
# each recipe's swept learning rates (trainer flags), swept one at a time in this order
SWEPT = {"gpt2": ("learning_rate",), "speedrun": ("muon_learning_rate", "learning_rate")}
# --ablation: each recipe's architecture with the other's optimizer, schedule and tuned learning rates (seed 0)
ABLATIONS = {
    "gpt2-arch+muon-wsd": ("gpt2", "speedrun", ["--optimizer", "muon", "--lr_schedule", "wsd", "--decay_ratio", "0.4",
                                                "--min_lr_ratio", "0", "--weight_decay", "0"]),
    "speedrun-arch+adamw-cosine": ("speedrun", "gpt2", ["--optimizer", "adamw", "--lr_schedule", "cosine",
                                                        "--min_lr_ratio", "0.1", "--weight_decay", "0.1"]),
}


@dataclass
class TimeToQualityArguments:
    seeds: int = field(default=3, metadata={"help": "training seeds (model init and data order) per recipe"})
    gpt2_lrs: list[float] = field(default_factory=lambda: [5e-4, 1e-3, 2e-3, 5e-3],
                                  metadata={"help": "AdamW learning rates the GPT-2 recipe is swept over (seed 0)"})
    muon_lrs: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1],
                                  metadata={"help": "Muon learning rates the speedrun recipe is swept over (seed 0)"})
    speedrun_adamw_lrs: list[float] = field(
        default_factory=lambda: [1e-3, 3e-3, 5e-3, 1e-2],
        metadata={"help": "AdamW learning rates of the speedrun recipe's other weights, swept at Muon's best (seed 0)"},
    )
    sweep_from: Optional[str] = field(
        default=None, metadata={"help": "reuse the sweep (its rows and chosen learning rates) saved in this earlier "
                                        "results JSON instead of sweeping again; the seeds are all retrained"})
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
    """One gpt-train run; its validation curve, training seconds per token and parameter count. A run whose loss
    turns non-finite is returned as diverged (final_val_loss None) instead of stopping the benchmark."""
    if not (out / "final").is_dir() and not (out / "diverged.txt").is_file():  # finished runs are reused on a rerun
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(RECIPES[recipe]), "--seed", str(seed),
               "--output_dir", str(out)]
        if max_steps is not None:
            cmd += ["--max_steps", str(max_steps)]
        cmd += overrides
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode and "training loss is" in done.stderr:
            (out / "diverged.txt").write_text(done.stderr[-3000:])
        elif done.returncode:
            sys.exit(f"time_to_quality: {shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
        else:
            (out / "stdout.txt").write_text(done.stdout)
    if (out / "diverged.txt").is_file():
        return dict(recipe=recipe, seed=seed, curve=[], final_val_loss=None, diverged=True)
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
        parameters=parameters(out), final_val_loss=records[-1]["val_loss"], diverged=False,
    )


def lr_flags(lrs: dict) -> list[str]:
    return [x for flag, value in sorted(lrs.items()) for x in (f"--{flag}", repr(value))]


def run_dir(work: Path, recipe: str, lrs: dict, seed: int) -> Path:
    """One folder per recipe, learning rates and seed: the sweep's seed-0 runs are the comparison's seed 0."""
    return work / ("-".join([recipe] + [f"{flag}{value:g}" for flag, value in sorted(lrs.items())]) + f"-seed{seed}")


def best_value(rows: list[dict], flag: str) -> float:
    """The swept value of `flag` whose run ended at the lowest validation loss (diverged runs never win)."""
    finished = [r for r in rows if r["swept"] == flag and r["final_val_loss"] is not None]
    if not finished:
        sys.exit(f"time_to_quality: every run of the {flag} sweep diverged; sweep lower learning rates")
    return min(finished, key=lambda r: r["final_val_loss"])[flag]


def sweep(recipe: str, grids: dict, args: TimeToQualityArguments, rows: list, record) -> dict:
    """Seed 0 over each optimizer's grid, one optimizer at a time in SWEPT's order, the others at their best so far
    (their config values until swept). Appends a row per run to `rows`, calls `record()` after each; returns the
    chosen learning rates."""
    config = yaml.safe_load(RECIPES[recipe].read_text())
    chosen = {flag: float(config[flag]) for flag in SWEPT[recipe]}
    for flag in SWEPT[recipe]:
        for value in grids[flag]:
            lrs = dict(chosen, **{flag: value})
            print(f"sweep {recipe}: {lrs}", flush=True)
            run = train(recipe, 0, run_dir(Path(args.work_dir), recipe, lrs, 0), args, args.max_steps, lr_flags(lrs))
            rows.append(dict(recipe=recipe, swept=flag, **lrs, final_val_loss=run["final_val_loss"]))
            record()
        chosen[flag] = best_value([r for r in rows if r["recipe"] == recipe], flag)
        if chosen[flag] in (min(grids[flag]), max(grids[flag])) and len(grids[flag]) > 1:
            print(f"sweep {recipe}: {flag}={chosen[flag]:g} is at the edge of its grid {grids[flag]}", flush=True)
    return chosen


def earlier_sweep(path: str) -> dict:
    """The sweep rows, chosen learning rates and commit of an earlier run of this benchmark (--sweep_from)."""
    try:
        earlier = json.loads(Path(path).read_text())
        chosen = {recipe: {flag: float(earlier["chosen_lrs"][recipe][flag]) for flag in SWEPT[recipe]}
                  for recipe in RECIPES}
        return dict(sweep=earlier["sweep"], chosen_lrs=chosen, commit=earlier.get("commit"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"time_to_quality: --sweep_from {path}: not a results JSON of this benchmark whose sweep chose "
                 f"{ {recipe: list(flags) for recipe, flags in SWEPT.items()} } ({type(e).__name__}: {e})")


def ngram_cross_entropy(train_streams: list, val: np.ndarray, vocab_size: int) -> dict:
    """Cross-entropy (nats per token) of val[1:] under add-one unigram and bigram models counted on the training
    streams: the loss of a model that uses no context, and of one that uses one token of it."""
    unigram = sum(np.bincount(t, minlength=vocab_size) for t in train_streams)
    pairs = np.concatenate([t[:-1].astype(np.int64) * vocab_size + t[1:] for t in train_streams])
    keys, counts = np.unique(pairs, return_counts=True)
    following = np.bincount(keys // vocab_size, weights=counts, minlength=vocab_size)  # bigrams that start with a token
    wanted = val[:-1].astype(np.int64) * vocab_size + val[1:]
    at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    seen = np.where(keys[at] == wanted, counts[at], 0)
    p_unigram = (unigram[val[1:]] + 1) / (unigram.sum() + vocab_size)
    p_bigram = (seen + 1) / (following[val[:-1]] + vocab_size)
    return dict(unigram=float(-np.log(p_unigram).mean()), bigram=float(-np.log(p_bigram).mean()))


def ngram_baselines(data_dir: Path, recipe: dict) -> dict:
    """The n-gram cross-entropies of the whole val split, and of its first tokens that the validation loss reads."""
    manifest = token_shards.read_manifest(data_dir)
    split = {name: [np.asarray(token_shards.open_shard(data_dir / s["file"])) for s in manifest["shards"]
                    if s["split"] == name] for name in ("train", "val")}
    val = np.concatenate(split["val"])
    evaluated = recipe["val_batches"] * recipe["micro_batch_size"] * recipe["seq_len"] + 1
    return dict(val_split=ngram_cross_entropy(split["train"], val, manifest["vocab_size"]),
                evaluated=ngram_cross_entropy(split["train"], val[:evaluated], manifest["vocab_size"]),
                evaluated_tokens=evaluated - 1)


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
    every = len(ratios) == len(per_seed)  # a seed that never reaches the target leaves no mean to claim
    summary = dict(
        token_ratio_mean=mean(ratios) if every else None,
        token_ratio_std=pstdev(ratios) if every else None,
        token_ratio_min=min(ratios) if every else None,
        token_ratio_max=max(ratios) if every else None,
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


def print_table(summary: dict, baselines: dict):
    ngram = baselines["evaluated"]
    print(f"validation tokens' cross-entropy: unigram {ngram['unigram']:.4f}, add-one bigram {ngram['bigram']:.4f} "
          f"(whole val split: {baselines['val_split']['unigram']:.4f}, {baselines['val_split']['bigram']:.4f})")
    print(f"{'seed':>4} | {'target':>7} | {'tokens to target':>16} | {'ratio':>5} | {'cost/token':>10} | {'confirm':>7}")
    for r in summary["per_seed"]:
        ratio = "never" if r["token_ratio"] is None else f"{r['token_ratio']:.3f}"
        reached = "-" if r["speedrun_tokens_to_target"] is None else f"{r['speedrun_tokens_to_target']:,.0f}"
        confirm = f"{r['confirm_final_val_loss']:.4f}" if "confirm_final_val_loss" in r else "-"
        print(f"{r['seed']:>4} | {r['target_val_loss']:.4f} | {reached:>16} | {ratio:>5} | {r['cost_per_token_ratio']:>10.3f} | {confirm:>7}")
    if summary["token_ratio_mean"] is not None:
        print(f"token ratio {summary['token_ratio_mean']:.3f} +- {summary['token_ratio_std']:.3f} "
              f"(min {summary['token_ratio_min']:.3f}, max {summary['token_ratio_max']:.3f})")
    if "step_cost" in summary:
        cost = summary["step_cost"]
        print(f"cost per token (fastest quarter of {cost['steps_timed']['gpt2']} alternating steps each): "
              f"speedrun / gpt2 = {cost['cost_per_token_ratio']:.3f}")


def step_cost_summary(args: TimeToQualityArguments, work: Path) -> dict:
    """The machine is shared: alternate short runs, and take each recipe's fastest steps as its cost."""
    costs = {"gpt2": [], "speedrun": []}
    for i in range(args.cost_rounds):
        for recipe in (costs if i % 2 == 0 else reversed(list(costs))):
            print(f"cost round {i}: {recipe}", flush=True)
            costs[recipe] += step_costs(recipe, work / f"cost-{recipe}", args)
    best = {k: sorted(v)[: max(1, len(v) // 4)] for k, v in costs.items()}  # the fastest quarter of the steps
    return dict(
        seconds_per_token_fastest_quarter={k: mean(v) for k, v in best.items()},
        seconds_per_token_median={k: sorted(v)[len(v) // 2] for k, v in costs.items()},
        steps_timed={k: len(v) for k, v in costs.items()},
        cost_per_token_ratio=mean(best["speedrun"]) / mean(best["gpt2"]),
    )


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(TimeToQualityArguments).parse_args_into_dataclasses(args=argv)
    configs = {k: yaml.safe_load(p.read_text()) for k, p in RECIPES.items()}
    data_dirs = {c["data_dir"] for c in configs.values()}
    if len(data_dirs) != 1:
        sys.exit(f"time_to_quality: the recipes must share one data_dir, got {sorted(data_dirs)}")
    data_dir = REPO / data_dirs.pop()
    ensure_data(data_dir, args)
    output = results_path("time_to_quality_cpu.json", args.output, args.save)
    work = Path(args.work_dir)
    result = dict(
        command="nice python bench/time_to_quality.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        commit=git_commit(), machine=dict(cpu=platform.processor() or platform.machine(), threads=args.threads,
                                          cores=os.cpu_count(), load_average=os.getloadavg()),
        settings=asdict(args), recipes=configs, ngram=ngram_baselines(data_dir, configs["gpt2"]),
        sweep=[], chosen_lrs={}, summary=None, runs=[], confirm_runs=[], ablation_runs=[],
    )
    print(f"validation tokens' cross-entropy: {result['ngram']}", flush=True)

    def record():  # rewritten after every run: an interrupted benchmark keeps what it finished
        atomic_io.write_json(output, result, indent=1)

    grids = {"gpt2": {"learning_rate": args.gpt2_lrs},
             "speedrun": {"muon_learning_rate": args.muon_lrs, "learning_rate": args.speedrun_adamw_lrs}}
    chosen = result["chosen_lrs"]
    if args.sweep_from:
        earlier = earlier_sweep(args.sweep_from)
        result["sweep"], result["sweep_from"] = earlier["sweep"], dict(path=args.sweep_from, commit=earlier["commit"])
        chosen.update(earlier["chosen_lrs"])
        print(f"sweep reused from {args.sweep_from} (commit {earlier['commit']}): {chosen}", flush=True)
    else:
        for recipe in RECIPES:
            chosen[recipe] = sweep(recipe, grids[recipe], args, result["sweep"], record)
    record()
    runs, confirms = result["runs"], result["confirm_runs"]
    base_steps = args.max_steps or configs["gpt2"]["max_steps"]
    for seed in range(args.seeds):
        for recipe in (["gpt2", "speedrun"] if seed % 2 == 0 else ["speedrun", "gpt2"]):
            print(f"seed {seed}: {recipe} at {chosen[recipe]}", flush=True)
            runs.append(train(recipe, seed, run_dir(work, recipe, chosen[recipe], seed), args, args.max_steps,
                              lr_flags(chosen[recipe])))
            record()
        if args.confirm_ratio:
            steps = round(args.confirm_ratio * base_steps)
            print(f"seed {seed}: speedrun over {steps} steps", flush=True)
            confirms.append(train("speedrun", seed, work / f"speedrun-{steps}steps-seed{seed}", args, steps,
                                  lr_flags(chosen["speedrun"])))
            record()
    if any(r["diverged"] for r in runs + confirms):
        sys.exit(f"time_to_quality: a run at the sweep's chosen learning rates diverged; see {work}")
    summary = result["summary"] = summarize(runs, confirms)
    record()
    if args.ablation:
        base = next(r for r in runs if r["recipe"] == "gpt2" and r["seed"] == 0)
        summary["ablation_seed0"] = {}
        for name, (architecture, other, overrides) in ABLATIONS.items():
            print(f"seed 0: {name} at {chosen[other]}", flush=True)
            run = dict(train(architecture, 0, work / f"{name}-seed0", args, args.max_steps,
                             overrides + lr_flags(chosen[other])), recipe=name, lrs=chosen[other])
            result["ablation_runs"].append(run)
            # not interleaved with the baseline: their wall-clock cost is not comparable, only their losses
            summary["ablation_seed0"][name] = dict(final_val_loss=run["final_val_loss"], lrs=chosen[other],
                                                   token_ratio=None if run["diverged"] else token_ratio(run, base))
            record()
    if args.cost_rounds:
        summary["step_cost"] = step_cost_summary(args, work)
    record()
    plot(runs, confirms, result["ablation_runs"], summary, output.with_suffix(".png"))
    print_table(summary, result["ngram"])
    print(f"results in {output} and {output.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
