"""The README's commands: every one is either run here, offline, exactly as written (the cheap ones), or falls in
a named class that says why not (slow, a GPU, the network, set-up, an illustration); the cheap ones print what the
README says they print.

They run from a copy of the repository's layout in a temporary folder (configs/ linked, ../shared beside it), with
HF_HUB_OFFLINE=1 and an unreachable HF_ENDPOINT: proof that they need no network. out/tiny is a stand-in for the
main job's run folder (a random tiny model, metrics.jsonl, a checkpoint's trainer_state.json), so that the
commands after the main job run without its minutes of training.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]

# commands run here, as written and in this order, with what their output must contain
RUN = {
    "TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache gpt-tokenize --dataset ../shared/data/fineweb-edu-mini --name sample-10BT --output data/mini --shard-size 100000 --val-tokens 100000":
        "data/mini: 618,503 tokens (100,000 val, 518,503 train) in 7 shards from 195 documents; 0 skipped",
    "TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache gpt-tokenize --data-files ../shared/data/tinyshakespeare/input.txt --output data/tinyshakespeare --val-tokens 32768":
        "data/tinyshakespeare: 338,026 tokens (32,768 val, 305,258 train) in 2 shards from 1 documents; 0 skipped",
    # after the command above, which tokenizes what it fine-tunes on
    "gpt-train --config configs/finetune-shakespeare-tiny.yaml":
        "done: 20 steps; Hugging Face folder in out/finetune-shakespeare-tiny/final",
    "gpt-eval plot out/tiny --output out/tiny/plots": "wrote out/tiny/plots/loss.png\nno hellaswag.png: no run logged HellaSwag scores",
    'gpt-eval --model out/tiny/final --tasks "" --val-data-dir data/fineweb-edu-mini --val-batches 20 --seq-len 128':
        "val   perplexity",
    "gpt-push --checkpoint out/tiny/final --repo-id your-name/gpt-tiny --dry-run --output-dir out/tiny/hub":
        "dry run: nothing uploaded; would upload to your-name/gpt-tiny",
}

# why the others are not run here; the first rule that matches a command classifies it
RULES = [
    ("set-up (CI runs it)", lambda c: c.startswith(("python -m venv", "python3 -m venv", "pip install", "bash .ci/run", "python -m pytest"))),
    ("illustration with placeholders", lambda c: "..." in c or "a.parquet" in c),
    ("tens of minutes on a CPU: the time-to-quality benchmark", lambda c: "bench/time_to_quality.py" in c),
    ("needs a GPU", lambda c: "cuda" in c or "ddp_8gpu" in c or "multinode" in c or "fsdp" in c
     or (c.startswith("python bench/") and "--threads" not in c)),
    ("needs the network (README: Offline, and what needs the network)",
     lambda c: c.startswith("gpt-tokenize --output") or "gpt-push" in c and "--dry-run" not in c
     or c.startswith("gpt-eval --model") and "--data-dir" not in c and '--tasks ""' not in c),
    ("needs the 8-GPU run's folder", lambda c: "out/gpt2-124m" in c),
    ("slow on a CPU: training a model or a tokenizer", lambda c: "gpt-train" in c or "train_accelerate.py" in c or "--train-tokenizer" in c),
    ("minutes on a CPU: full or multi-task evaluations, benchmarks", lambda c: c.startswith(("gpt-eval", "accelerate launch", "python bench/"))),
]


def readme_commands() -> list[str]:
    """Every command in the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def classify(command: str) -> str:
    if command in RUN:
        return "run"
    return next((name for name, rule in RULES if rule(command)), "unclassified")


def test_every_readme_command_is_run_or_has_a_reason():
    commands = readme_commands()
    assert len(commands) > 20
    unclassified = [c for c in commands if classify(c) == "unclassified"]
    assert not unclassified, f"README commands neither run by this test nor classified: {unclassified}"
    assert set(RUN) <= set(commands), f"RUN names commands the README no longer has: {set(RUN) - set(commands)}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """tmp/repo (configs/ linked, out/tiny a stand-in run) with tmp/shared -> the shared data."""
    if not (SHARED / "fineweb-edu-mini").is_dir():
        pytest.skip(f"the shared data is not at {SHARED}")
    from modeling_gpt import GPTConfig, GPTForCausalLM
    from modeling_gpt.tokenizer import gpt2_tokenizer

    top = tmp_path_factory.mktemp("clone")
    repo = top / "repo"
    (repo / "out" / "tiny" / "checkpoints" / "step_0000004").mkdir(parents=True)
    (repo / "configs").symlink_to(ROOT / "configs")
    (top / "shared").symlink_to(SHARED.parent)
    run = repo / "out" / "tiny"
    torch.manual_seed(0)
    GPTForCausalLM(GPTConfig.from_preset("tiny", n_positions=128)).save_pretrained(run / "final")
    gpt2_tokenizer(SHARED / "gpt2-tokenizer").save_pretrained(run / "final")
    rows = [dict(step=s, loss=10.8 - s, lr=1e-3, grad_norm=1.0, tokens=2048 * s, tokens_per_sec=1000.0) for s in range(1, 5)]
    rows[-1]["val_loss"] = 7.5
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = dict(step=4, tokens=8192, total_batch_tokens=2048, seq_len=128, world_size=1,
                 config={"data_dir": "data/fineweb-edu-mini", "init_from": None})
    (run / "checkpoints" / "step_0000004" / "trainer_state.json").write_text(json.dumps(state))
    (run / "final" / "training_record.json").write_text(json.dumps(state))  # as the trainer writes it with final/
    # the main job's first step: the stand-in tokenized as configs/tiny.yaml says
    result = _run("gpt-tokenize --dataset ../shared/data/fineweb-edu-mini --name sample-10BT --output data/fineweb-edu-mini "
                  "--tokenizer ../shared/data/gpt2-tokenizer --shard-size 200000 --val-tokens 32768", repo)
    assert result.returncode == 0, result.stderr[-2000:]
    return repo


def _run(command: str, repo: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TIKTOKEN"))}
    env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(repo.parent / "hf-home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    return subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUN), ids=lambda c: shlex.split(c)[0] if "=" not in c.split()[0] else shlex.split(c)[1])
def test_cheap_readme_commands_run_offline_as_written(sandbox, command):
    result = _run(command, sandbox)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert RUN[command] in result.stdout + result.stderr


@pytest.mark.slow
def test_published_card_names_what_the_run_recorded(sandbox):
    # after the dry run above: the card says what gpt-tokenize recorded, a local folder, and claims no Hub dataset
    card = (sandbox / "out" / "tiny" / "hub" / "README.md").read_text()
    assert ("pretrained from scratch on a local copy of a dataset, `../shared/data/fineweb-edu-mini` "
            "(name `sample-10BT`, split `train`)") in card and "datasets:" not in card
