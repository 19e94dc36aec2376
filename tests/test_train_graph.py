"""What gpt-train's compiled training step computes, read off the graph torch.compile captures from the real trainer
(start_up, then train_step) under bf16 mixed precision, for both recipes' models and optimizers and for --fp8: one
graph, sdpa with no mask and is_causal=True (the flash kernel's condition), no float32 copy of the (B, T, V) logits
among its outputs (accelerate's mixed precision converts every bf16 output to float32; the trainer keeps its autocast
and drops that conversion), and float8 matmuls exactly where --fp8 puts them (where torchao is installed).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import torch
import torch.nn.functional as F
import train_accelerate

from functools import partial
from torch._functorch.aot_autograd import aot_module_simplified

graphs = []
MATMULS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten._scaled_mm.default"}

def count_matmuls(counts, gm, example_inputs):
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target) in MATMULS:
            counts[str(n.target)] = counts.get(str(n.target), 0) + 1
    return gm.forward

def reading_backend(gm, example_inputs):
    outputs = [n for n in gm.graph.nodes if n.op == "output"][0]
    values = [a.meta["example_value"] for a in torch.utils._pytree.tree_leaves(outputs.args) if hasattr(a, "meta")]
    graph = {
        "sdpa": [(n.kwargs.get("attn_mask") is None, n.kwargs.get("is_causal", False)) for n in gm.graph.nodes
                 if n.op == "call_function" and n.target is F.scaled_dot_product_attention],
        "outputs": [(str(v.dtype), list(v.shape)) for v in values if torch.is_tensor(v)],
        "forward": {}, "backward": {},
    }
    graphs.append(graph)
    # the aten graphs of the forward and the backward, as inductor gets them: which matmul kernels they call
    return aot_module_simplified(gm, example_inputs, fw_compiler=partial(count_matmuls, graph["forward"]),
                                 bw_compiler=partial(count_matmuls, graph["backward"]))

# --fp8's float8 matmuls run emulated on a CPU, where gpt-train refuses them: lift that one check
train_accelerate.check_fp8 = lambda device: None
compile = torch.compile
torch.compile = lambda model, **kwargs: compile(model, backend=reading_backend, **kwargs)
run = train_accelerate.start_up(sys.argv[1:])
loss, norm = train_accelerate.train_step(run)
x, _ = run.train_loader.next_batch()
with torch.no_grad():
    eager = run.eval_model(input_ids=x)
print(json.dumps({"graphs": graphs, "loss": loss.item(), "norm": norm.item(), "accum": run.accum,
                  "eval_logits": [str(eager.logits.dtype), list(eager.logits.shape)]}))
"""


RECIPES = {
    "gpt2": ["--model_preset", "tiny"],
    # configs/speedrun-124m.yaml's model and optimizer, two blocks of width 64
    "speedrun": ["--config", str(REPO / "configs" / "speedrun-124m.yaml"), "--n_layer", "2", "--n_embd", "64",
                 "--n_head", "4", "--n_inner", "172", "--hellaswag", "false", "--sample_prompts", "[]"],
    "fp8": ["--model_preset", "tiny", "--fp8", "true"],
}


@pytest.fixture(scope="module", params=list(RECIPES))
def probe(request, mini_data, tmp_path_factory):
    if request.param == "fp8":
        pytest.importorskip("torchao.float8", reason="torchao is an optional extra (pip install -e '.[gpu]')")
    out = tmp_path_factory.mktemp("graph") / "run"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *RECIPES[request.param], "--data_dir", str(mini_data), "--output_dir", str(out),
         "--mixed_precision", "bf16", "--compile", "true", "--micro_batch_size", "2", "--seq_len", "64",
         "--total_batch_tokens", "256", "--max_steps", "1", "--eval_interval", "0", "--save_interval", "0",
         "--val_batches", "1", "--tracker", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"recipe": request.param, **json.loads(done.stdout.strip().splitlines()[-1])}


def test_the_training_step_compiles_to_one_graph_over_both_micro_batches(probe):
    assert probe["accum"] == 2
    assert len(probe["graphs"]) == 1, probe["graphs"]  # no graph break, no recompilation for the second micro-batch
    assert probe["loss"] > 0 and probe["norm"] > 0


def test_every_attention_call_gets_no_mask_and_is_causal(probe):
    (graph,) = probe["graphs"]
    assert graph["sdpa"] and all(call == [True, True] for call in graph["sdpa"]), graph["sdpa"]


def test_the_logits_leave_the_graph_in_bf16_and_only_the_loss_in_float32(probe):
    (graph,) = probe["graphs"]
    vocab = 512  # mini_data's tokenizer
    assert ["torch.bfloat16", [2, 64, vocab]] in graph["outputs"], graph["outputs"]
    assert [shape for dtype, shape in graph["outputs"] if dtype == "torch.float32"] == [[]], graph["outputs"]


def test_evaluation_still_runs_under_autocast(probe):
    # float32 weights: bf16 logits come only from the autocast the trainer kept
    assert probe["eval_logits"] == ["torch.bfloat16", [2, 64, 512]]


def test_float8_runs_every_block_matmul_and_only_those(probe):
    """--fp8: each block's 4 linear layers run torch._scaled_mm, once in the forward and twice in the backward (the
    input's and the weight's gradient); the head stays a bf16 matmul. Without --fp8 no float8 kernel is called."""
    (graph,) = probe["graphs"]
    if probe["recipe"] != "fp8":
        assert "aten._scaled_mm.default" not in {**graph["forward"], **graph["backward"]}, graph
        return
    blocks = 2 * 4
    assert graph["forward"] == {"aten._scaled_mm.default": blocks, "aten.mm.default": 1}, graph["forward"]
    assert graph["backward"] == {"aten._scaled_mm.default": 2 * blocks, "aten.mm.default": 2}, graph["backward"]
