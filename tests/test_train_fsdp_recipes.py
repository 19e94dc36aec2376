"""The recipes' own settings under FSDP2 (2 CPU processes over gloo): Muon and AdamW as two optimizers on one
sharded model, and --fp8's float8 blocks sharded, each resumed exactly from its sharded checkpoint."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import FLOAT8_LAUNCH
from fsdp_runs import command, fsdp, metrics, run, short_run


@pytest.mark.slow
def test_muon_under_fsdp_follows_ddp_and_resumes_exactly(tmp_path, mini_data, assert_same_run):
    """Two optimizers on one FSDP model (Muon and AdamW): checkpointed and resumed like one."""
    steps = 6
    short_run(tmp_path, mini_data, steps, 3, "optimizer: muon\n")
    run(command(tmp_path, "ddp", "--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"))
    run(fsdp(tmp_path, "fsdp"))
    ddp, sharded = metrics(tmp_path / "ddp"), metrics(tmp_path / "fsdp")
    # Muon's Newton-Schulz runs in bfloat16: reduce-scatter vs all-reduce rounding shows at ~1e-5 in the losses
    torch.testing.assert_close(torch.tensor([r["loss"] for r in sharded]), torch.tensor([r["loss"] for r in ddp]),
                               rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "fsdp" / "checkpoints" / "step_0000003").glob("optimizer_*")) == [
        "optimizer_0", "optimizer_1"]
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed", ignore=shutil.ignore_patterns("final", "step_0000006"))
    run(fsdp(tmp_path, "resumed", "--resume_from_checkpoint", "latest"))
    assert_same_run(tmp_path / "fsdp", tmp_path / "resumed", steps)


@pytest.mark.slow
def test_float8_under_fsdp_follows_the_run_without_it_resumes_exactly_and_exports_plain_weights(
        tmp_path, mini_data, assert_same_run):
    """--fp8 under FSDP2: the blocks' linear layers, converted before they are sharded, train in float8 close to the
    same run without --fp8; the sharded checkpoint resumes exactly; final/ holds the weights a run without it exports."""
    pytest.importorskip("torchao.float8", reason="torchao is an optional extra (pip install -e '.[gpu]')")
    from transformers import AutoModelForCausalLM

    steps = 4
    short_run(tmp_path, mini_data, steps, 2)
    launcher = tmp_path / "float8_launch.py"
    launcher.write_text(FLOAT8_LAUNCH)
    run(fsdp(tmp_path, "plain"))
    float8 = run(fsdp(tmp_path, "fp8", "--fp8", "true", script=launcher))
    assert "DistributedType.FSDP on cpu:0, no + float8 in 8 linear layers |" in float8.stdout  # each block's 4
    plain, fp8 = metrics(tmp_path / "plain"), metrics(tmp_path / "fp8")
    assert [r["step"] for r in fp8] == list(range(1, steps + 1))
    # e4m3 forward, e5m2 gradients against fp32 matmuls: the mean losses 4e-4 apart at most with torchao 0.18
    torch.testing.assert_close(torch.tensor([r["loss"] for r in fp8]), torch.tensor([r["loss"] for r in plain]),
                               rtol=0, atol=1e-2)
    assert all(a["loss"] != b["loss"] for a, b in zip(fp8, plain))  # float8 really ran

    shutil.copytree(tmp_path / "fp8", tmp_path / "resumed", ignore=shutil.ignore_patterns("final", f"step_{steps:07d}"))
    run(fsdp(tmp_path, "resumed", "--fp8", "true", "--resume_from_checkpoint", "latest", script=launcher))
    assert_same_run(tmp_path / "fp8", tmp_path / "resumed", steps)

    want, have = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("plain", "fp8"))
    assert {k: (v.shape, v.dtype) for k, v in have.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "fp8" / "final")
    assert not any("Float8" in type(m).__name__ for m in exported.modules())
