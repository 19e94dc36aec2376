"""The faster recipe's trainer parts: warmup-stable-decay schedule, Muon + AdamW groups, their settings."""

import pytest
import torch

import train_accelerate as ta
from modeling_gpt import GPTConfig, GPTForCausalLM

WSD = dict(learning_rate=1.0, warmup_steps=10, max_steps=100, min_lr_ratio=0.0, schedule="wsd", decay_ratio=0.2)


def parse(*argv):
    return ta.parse_args(["--data_dir", "data/x", *argv])


def tiny(**overrides):
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2.5", vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=64,
                                   bos_token_id=511, eos_token_id=511, **overrides)
    return GPTForCausalLM(config)


def test_wsd_schedule():
    lrs = [ta.get_lr(s, **WSD) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup, as the cosine has
    assert lrs[10:80] == [1.0] * 70  # stable until the last 20% of the steps
    assert lrs[80:] == pytest.approx([1 - i / 20 for i in range(20)])  # linear decay towards the floor
    assert ta.get_lr(100, **WSD) == 0.0
    floor = dict(WSD, learning_rate=6e-4, min_lr_ratio=0.1)
    assert ta.get_lr(80, **floor) == 6e-4 and ta.get_lr(90, **floor) == pytest.approx(6e-5 + 0.5 * 5.4e-4)
    assert ta.get_lr(99, **floor) > ta.get_lr(100, **floor) == pytest.approx(6e-5)
    # the decay never starts inside the warmup, and decay_ratio=0 holds the peak to the end
    assert ta.get_lr(10, **dict(WSD, decay_ratio=1.0)) == 1.0 and ta.get_lr(11, **dict(WSD, decay_ratio=1.0)) < 1.0
    assert [ta.get_lr(s, **dict(WSD, decay_ratio=0.0)) for s in range(10, 100)] == [1.0] * 90


def test_cosine_is_still_the_default():
    cosine = dict(learning_rate=1.0, warmup_steps=10, max_steps=100, min_lr_ratio=0.1)
    assert [ta.get_lr(s, **cosine) for s in range(120)] == [ta.get_lr(s, **cosine, schedule="cosine") for s in range(120)]
    assert ta.get_lr(55, **cosine) == pytest.approx(0.55)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny(tie_word_embeddings=False, qk_norm=True)
    _, _, args = parse("--optimizer", "muon", "--muon_learning_rate", "0.05", "--learning_rate", "3e-3",
                       "--weight_decay", "0.1", "--muon_weight_decay", "0.01")
    muon, adamw = ta.build_optimizers(model, args, torch.device("cpu"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    (hidden,) = muon.param_groups
    assert sorted(names[id(p)] for p in hidden["params"]) == sorted(
        f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    assert (hidden["lr"], hidden["weight_decay"], hidden["momentum"], hidden["nesterov"]) == (0.05, 0.01, 0.95, True)
    decay, no_decay = adamw.param_groups
    assert sorted(names[id(p)] for p in decay["params"]) == ["lm_head.weight", "transformer.wte.weight"]
    assert all(names[id(p)].endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")) for p in no_decay["params"])
    assert (decay["lr"], decay["weight_decay"], no_decay["weight_decay"]) == (3e-3, 0.1, 0.0)
    # every trainable parameter in exactly one group
    grouped = [id(p) for opt in (muon, adamw) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(names) and len(set(grouped)) == len(grouped)


def test_classic_model_biases_and_positions_go_to_adamw():
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig.from_preset("tiny", vocab_size=512, n_layer=2, bos_token_id=511, eos_token_id=511))
    _, _, args = parse("--optimizer", "muon")
    muon, adamw = ta.build_optimizers(model, args, torch.device("cpu"))
    assert all(p.dim() == 2 for p in muon.param_groups[0]["params"]) and len(muon.param_groups[0]["params"]) == 8
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in adamw.param_groups[0]["params"]) == ["transformer.wpe.weight", "transformer.wte.weight"]
    assert any(names[id(p)].endswith("c_attn.bias") for p in adamw.param_groups[1]["params"])


def test_each_group_follows_the_schedule_from_its_own_peak():
    model = tiny()
    _, _, args = parse("--optimizer", "muon", "--lr_schedule", "wsd", "--max_steps", "100", "--warmup_steps", "10",
                       "--learning_rate", "3e-3", "--muon_learning_rate", "0.04", "--min_lr_ratio", "0.0")
    muon, adamw = ta.build_optimizers(model, args, torch.device("cpu"))
    for step, factor in ((0, 0.1), (50, 1.0), (90, 0.5)):
        logged = ta.set_lrs([muon, adamw], step, args)
        assert logged == pytest.approx(3e-3 * factor)
        assert muon.param_groups[0]["lr"] == pytest.approx(0.04 * factor)
        assert [g["lr"] for g in adamw.param_groups] == pytest.approx([3e-3 * factor] * 2)
    # a resumed run's peaks come from its settings, not from the LRs stored in the checkpoint's param groups
    saved = [opt.state_dict() for opt in (muon, adamw)]
    _, _, args = parse("--optimizer", "muon", "--lr_schedule", "wsd", "--max_steps", "100", "--warmup_steps", "10",
                       "--learning_rate", "1e-3", "--muon_learning_rate", "0.01")
    muon, adamw = ta.build_optimizers(model, args, torch.device("cpu"))
    for opt, state in zip((muon, adamw), saved):
        opt.load_state_dict(state)
    ta.set_lrs([muon, adamw], 50, args)
    assert muon.param_groups[0]["lr"] == 0.01 and [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]


def test_adamw_alone_is_unchanged():
    model = tiny()
    _, _, args = parse("--learning_rate", "1e-3")
    (adamw,) = ta.build_optimizers(model, args, torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW)
    assert [len(g["params"]) for g in adamw.param_groups] == [len(g["params"]) for g in ta.param_groups(model, 0.1)]


def test_a_muon_step_orthogonalises_the_update():
    """What torch.optim.Muon does with our groups: the first update of a block matrix is lr * scale * NS(grad)."""
    model = tiny()
    _, _, args = parse("--optimizer", "muon", "--muon_learning_rate", "0.02", "--muon_momentum", "0.0")
    muon, adamw = ta.build_optimizers(model, args, torch.device("cpu"))
    ta.set_lrs([muon, adamw], 10**6, args)  # past the end: the floor
    x = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))  # 256 tokens: a full-rank gradient
    model(input_ids=x, labels=x).loss.backward()
    embedding = model.transformer.wte.weight.detach().clone()
    w = model.transformer.h[0].mlp.c_proj.weight  # (64, 128): Muon's "original" scale is sqrt(max(1, 64/128)) = 1
    before = w.detach().clone()
    muon.step()
    update = (before - w.detach()) / muon.param_groups[0]["lr"]
    singular = torch.linalg.svdvals(update)
    assert 0.5 < singular.min() and singular.max() < 1.5  # Newton-Schulz: all singular values near 1
    assert torch.equal(model.transformer.wte.weight, embedding)  # AdamW's parameters are not Muon's to step


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "sgd"], "optimizer='sgd' is not supported; use one of ('adamw', 'muon')"),
        (["--lr_schedule", "linear"], "lr_schedule='linear' is not supported; use one of ('cosine', 'wsd')"),
        (["--decay_ratio", "1.5"], "decay_ratio=1.5 must be in [0, 1]"),
        (["--muon_learning_rate", "0"], "muon_learning_rate=0.0 must be > 0"),
        (["--muon_momentum", "1.0"], "muon_momentum=1.0 must be in [0, 1)"),
        (["--optimizer", "muon", "--mixed_precision", "fp16"], "optimizer='muon' with mixed_precision='fp16' is not supported"),
    ],
)
def test_bad_values_are_named(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse(*argv)


def test_architecture_overrides_reach_the_model():
    model_args, _, _ = parse("--model_preset", "gpt2.5", "--qk_norm", "true", "--tie_word_embeddings", "false",
                             "--zero_init_residual", "true", "--n_layer", "1", "--n_embd", "64", "--n_head", "4")
    model = ta.build_model(model_args, vocab_size=512, eot_id=0, device=torch.device("cpu"))
    assert (model.config.qk_norm, model.config.tie_word_embeddings, model.config.zero_init_residual) == (True, False, True)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert torch.count_nonzero(model.transformer.h[0].attn.c_proj.weight) == 0


def _sharded_muon_step(rank: int, init_file: str, results: dict):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    weight, grad = torch.randn(96, 32), torch.randn(96, 32)
    mesh = init_device_mesh("cpu", (2,))
    p = torch.nn.Parameter(distribute_tensor(weight, mesh, [Shard(0)]))  # FSDP2's layout: rows split over ranks
    p.grad = distribute_tensor(grad, mesh, [Shard(0)])
    torch.optim.Muon([p], lr=0.02).step()
    full = p.detach().full_tensor()
    if rank == 0:
        results["placements"] = str(p.placements)
        results["update"] = (full - weight).tolist()
    dist.barrier()  # neither rank tears gloo down while the other still uses it (that aborts the process)
    dist.destroy_process_group()


@pytest.mark.slow
def test_muon_on_fsdp2_sharded_params_orthogonalises_the_full_matrix(tmp_path):
    """FSDP2 shards each weight by rows (DTensor Shard(0)). torch.optim.Muon runs on such a parameter and DTensor's
    collectives give it the whole matrix: the update is the full-matrix one to bfloat16 precision, not the
    per-shard orthogonalisation (which would be ~30% off)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_sharded_muon_step, args=(str(tmp_path / "init"), results), nprocs=2)
    torch.manual_seed(0)
    weight, grad = torch.randn(96, 32), torch.randn(96, 32)

    def muon_update(w, g):
        p = torch.nn.Parameter(w.clone())
        p.grad = g.clone()
        torch.optim.Muon([p], lr=0.02).step()
        return p.detach() - w

    full = muon_update(weight, grad)
    per_shard = torch.cat([muon_update(w, g) for w, g in zip(weight.chunk(2), grad.chunk(2))])
    error = lambda update: ((update - full).norm() / full.norm()).item()  # noqa: E731
    assert results["placements"] == "(Shard(dim=0),)"
    assert error(torch.tensor(results["update"])) < 0.05  # bfloat16 Newton-Schulz: ~0.03 measured
    assert error(per_shard) > 0.2


@pytest.mark.parametrize("recipe", ["speedrun-124m", "speedrun-cpu", "gpt2-cpu"])
def test_shipped_speedrun_recipes_parse(recipe):
    from pathlib import Path

    model_args, _, args = ta.parse_args(["--config", str(Path(ta.__file__).parent / "configs" / f"{recipe}.yaml")])
    if recipe == "speedrun-124m":
        assert (args.optimizer, args.lr_schedule, model_args.qk_norm, model_args.tie_word_embeddings) == ("muon", "wsd", True, False)
        for world in (1, 2, 4, 8):  # the batch divides on 1 to 8 GPUs of 64 x 1024
            ta.gradient_accumulation_steps(args.total_batch_tokens, args.micro_batch_size, args.seq_len, world)
        with torch.device("meta"):
            model = ta.build_model(model_args, vocab_size=50257, eot_id=50256, device=torch.device("cpu"))
        # 124M-class: GPT-2's 124.4M plus the untied head's 38.6M
        assert 160e6 < model.num_parameters() < 166e6
