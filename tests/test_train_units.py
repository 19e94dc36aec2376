"""Unit tests of train_accelerate's small parts: settings, LR schedule, optimizer groups, checkpoints, metrics, MFU."""

import json
import math
import re
import shutil
import types

import pytest
import torch

import train_accelerate as ta
from modeling_gpt import GPTConfig, GPTForCausalLM


def parse(*argv):
    return ta.parse_args(["--data_dir", "data/x", *argv])


def write_yaml(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


# -- settings -------------------------------------------------------------------------------------


def test_yaml_recipe_then_command_line_overrides(tmp_path):
    recipe = write_yaml(tmp_path, "model_preset: tiny\nlearning_rate: 6e-4\nmax_steps: 50\ncompile: true\nsample_prompts: []\n")
    model_args, data_args, args = ta.parse_args(["--config", recipe, "--data_dir", "d", "--max_steps", "7"])
    assert model_args.model_preset == "tiny"
    assert args.learning_rate == 6e-4  # YAML 1.1 reads 6e-4 as a string: argparse converts it
    assert args.max_steps == 7  # the command line wins over the recipe
    assert args.compile is True and args.sample_prompts == []
    assert data_args.data_dir == "d"


def test_every_field_is_documented():
    for cls in ta.ARGUMENT_CLASSES:
        for f in ta.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("recipes", ["configs/gpt2-124m.yaml", "configs/gpt2.5.yaml", "configs/tiny.yaml"])
def test_shipped_recipes_parse(recipes):
    from pathlib import Path

    path = Path(ta.__file__).parent / recipes
    model_args, data_args, args = ta.parse_args(["--config", str(path)])
    assert data_args.data_dir and args.max_steps > 0
    if "gpt2" in recipes:  # the 124M recipe's batch divides on 1 to 8 GPUs of 64 x 1024
        for world in (1, 2, 4, 8):
            ta.gradient_accumulation_steps(args.total_batch_tokens, args.micro_batch_size, args.seq_len, world)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model_preset", "gpt5"], "model_preset='gpt5' is unknown"),
        (["--max_steps", "0"], "max_steps=0 must be >= 1"),
        (["--learning_rate", "-1"], "learning_rate=-1.0 must be > 0"),
        (["--min_lr_ratio", "1.5"], "min_lr_ratio=1.5 must be in [0, 1]"),
        (["--mixed_precision", "fp8"], "mixed_precision='fp8' is not supported"),
        (["--tracker", "mlflow"], "tracker='mlflow' is not supported"),
        (["--hellaswag_scoring", "lm-eval"], "hellaswag_scoring='lm-eval' is not supported; use 'nanogpt' or 'harness'"),
        (["--adam_beta2", "1.0"], "adam_beta2=1.0 must be in [0, 1)"),
        (["--save_interval", "-1"], "save_interval=-1 must be >= 0"),
        (["--init_from", "some/model", "--n_layer", "4"], "change the shape of a model trained from scratch; with init_from only dropout"),
    ],
)
def test_bad_values_are_named(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse(*argv)


def test_bad_recipes(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['learning_rat'\]; accepted fields: .*'learning_rate'"):
        ta.parse_args(["--config", write_yaml(tmp_path, "learning_rat: 1e-3\n")])
    with pytest.raises(ValueError, match="max_steps=1.5 must be of type int"):
        ta.parse_args(["--config", write_yaml(tmp_path, "max_steps: 1.5\ndata_dir: d\n")])
    with pytest.raises(ValueError, match="data_dir is not set"):
        ta.parse_args([])
    with pytest.raises(ValueError, match="no such file"):
        ta.parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_gradient_accumulation_steps():
    assert ta.gradient_accumulation_steps(524288, 64, 1024, 8) == 1
    assert ta.gradient_accumulation_steps(524288, 16, 1024, 8) == 4
    assert ta.gradient_accumulation_steps(524288, 64, 1024, 1) == 8
    with pytest.raises(ValueError, match=r"total_batch_tokens=524288 is not a multiple of .* 64 \* 1024 \* 3 = 196608"):
        ta.gradient_accumulation_steps(524288, 64, 1024, 3)


# -- optimization ---------------------------------------------------------------------------------


def test_lr_schedule_endpoints():
    lr = dict(learning_rate=6e-4, warmup_steps=715, max_steps=19073, min_lr_ratio=0.1)
    assert ta.get_lr(0, **lr) == pytest.approx(6e-4 / 715)  # the first step already learns
    assert ta.get_lr(714, **lr) == pytest.approx(6e-4)  # warmup ends at the peak
    assert ta.get_lr(715, **lr) == pytest.approx(6e-4)  # cosine starts at the peak
    midpoint = 715 + (19073 - 715) // 2
    assert ta.get_lr(midpoint, **lr) == pytest.approx(6e-5 + 0.5 * (6e-4 - 6e-5), rel=1e-4)
    assert ta.get_lr(19072, **lr) == pytest.approx(6e-5, rel=1e-6)  # the last step is at the floor
    assert ta.get_lr(19073, **lr) == pytest.approx(6e-5)
    steps = [ta.get_lr(s, **lr) for s in range(715, 19073)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # monotone decay
    assert ta.get_lr(0, learning_rate=1.0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == 1.0


def test_weight_decay_groups():
    model = GPTForCausalLM(GPTConfig.from_preset("tiny", vocab_size=256, bos_token_id=0, eos_token_id=0))
    decay, no_decay = ta.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert "transformer.wte.weight" in decayed and "transformer.h.0.attn.c_attn.weight" in decayed
    assert "transformer.h.0.attn.c_attn.bias" in plain and "transformer.ln_f.weight" in plain
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    # every parameter exactly once; the tied head is the embedding
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    torch.optim.AdamW([decay, no_decay], lr=1e-3)


# -- throughput -----------------------------------------------------------------------------------


def fake_checkpoint(manager, step):
    tmp = manager.temp_path(step)
    tmp.mkdir(parents=True)
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    return manager.commit(step)


def test_checkpoint_manager_latest_ignores_partial_and_keeps_last_k(tmp_path):
    manager = ta.CheckpointManager(tmp_path / "checkpoints", keep_last_k=2)
    assert manager.latest() is None
    for step in (100, 200, 300):
        fake_checkpoint(manager, step)
    assert manager.steps() == [200, 300]  # the oldest was pruned
    assert manager.latest().name == "step_0000300"
    # a crash mid-save leaves a temporary folder, and one without trainer_state.json: never picked
    manager.temp_path(400).mkdir()
    (manager.root / "step_0000500").mkdir()
    assert manager.latest().name == "step_0000300"
    manager.remove_partial()
    assert not manager.temp_path(400).exists()
    # saving a step again (after resuming from an older checkpoint) replaces it
    fake_checkpoint(manager, 300)
    assert manager.steps() == [200, 300]


def test_metrics_truncate_drops_redone_steps_and_torn_line(tmp_path):
    log = ta.MetricsLog(tmp_path / "metrics.jsonl")
    log.truncate(5)  # no file yet: nothing to do
    log.append([{"step": s, "loss": 10.0 - s} for s in range(1, 9)])
    with log.path.open("a") as f:
        f.write('{"step": 9, "lo')  # killed mid-write
    log.truncate(6)
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4, 5, 6]
    log.truncate(0)
    assert log.read() == []


def test_check_finite_names_the_step_and_the_checkpoint(tmp_path):
    ta.check_finite([{"step": 1, "loss": 3.0}], None)
    with pytest.raises(ta.NonFiniteLossError, match=r"loss is nan at step 7; stopping \(the last good checkpoint is .*step_0000005\)"):
        ta.check_finite([{"step": 6, "loss": 2.0}, {"step": 7, "loss": math.nan}], tmp_path / "step_0000005")
    with pytest.raises(ta.NonFiniteLossError, match="loss is inf at step 2; stopping \\(no checkpoint"):
        ta.check_finite([{"step": 2, "loss": math.inf}], None)


@pytest.mark.parametrize("complete, tokenizes", [(True, False), (False, True)])
def test_tokenizes_unless_a_complete_manifest_is_there(tmp_path, monkeypatch, complete, tokenizes):
    import tokenize_fineweb
    from accelerate import Accelerator

    manifest = {"vocab_size": 8, "eot_id": 0, "tokenizer": {}, "shards": [], "stream": {"complete": complete}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    calls = []
    monkeypatch.setattr(tokenize_fineweb, "main", calls.append)  # stands in for the tokenizer, a separate tool
    data_args = ta.DataArguments(data_dir=str(tmp_path), tokenize_dataset="some/dataset")
    ta.ensure_tokenized(data_args, Accelerator(cpu=True))
    assert bool(calls) == tokenizes  # a killed tokenization left complete=False: it must be resumed
    if tokenizes:
        assert calls[0][:4] == ["--dataset", "some/dataset", "--output", str(tmp_path)]


def test_several_processes_never_wait_on_a_tokenization(tmp_path):
    data_args = ta.DataArguments(data_dir=str(tmp_path / "data"), tokenize_dataset="some/dataset", tokenize_name="cfg")
    with pytest.raises(ta.ConfigError, match=r"manifest.json is missing or incomplete: with 2 processes, tokenize first "
                                             r"in one process: gpt-tokenize --dataset some/dataset --output .*data --name cfg$"):
        ta.ensure_tokenized(data_args, types.SimpleNamespace(num_processes=2))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    args = dict(model_preset="tiny", n_layer=2, n_embd=64, n_head=4)
    torch.manual_seed(0)
    plain = ta.build_model(ta.ModelArguments(**args), 512, 0, torch.device("cpu"))
    torch.manual_seed(0)
    checkpointed = ta.build_model(ta.ModelArguments(**args, gradient_checkpointing=True), 512, 0, torch.device("cpu"))
    assert checkpointed.transformer.gradient_checkpointing and not plain.transformer.gradient_checkpointing
    x = torch.randint(0, 512, (2, 32))
    for model in (plain, checkpointed):
        model.train()
        model(input_ids=x, labels=x).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_a_corrupt_shard_stops_the_start_in_one_line(mini_data, tmp_path, refused):
    data = tmp_path / "data"
    shutil.copytree(mini_data, data)
    shard = next(data.glob("train_*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(raw)
    line = refused(ta.main, ["--model_preset", "tiny", "--data_dir", str(data), "--output_dir", str(tmp_path / "out"),
                             "--tracker", "none", "--micro_batch_size", "4", "--seq_len", "64", "--total_batch_tokens", "256"])
    assert re.match(rf"gpt-train: error: shard {shard} is corrupt: sha256 [0-9a-f]{{64}} does not match", line), line
