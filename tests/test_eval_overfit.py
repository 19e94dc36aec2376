"""A tiny model that memorised the right endings of a few HellaSwag items scores 100% on them with both
scorings; with random weights it stays near chance (25%)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval import run_tasks
from eval.data import hellaswag_preprocess, load_task_docs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "hellaswag").is_dir(), reason=f"shared data not found at {DATA}")


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256))


@pytest.fixture(scope="module")
def tokenizer():
    from modeling_gpt.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer(DATA / "gpt2-tokenizer")


def test_memorised_items_score_100_percent(tokenizer):
    docs = load_task_docs("hellaswag", DATA, limit=3)
    # train p(right ending | lm-eval's query) only: the ending's positions are the only logits computed
    examples = []
    for d in docs:
        query = hellaswag_preprocess(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
        ending = tokenizer.encode(" " + hellaswag_preprocess(d["endings"][d["label"]]))
        examples.append((torch.tensor([tokenizer.encode(query) + ending]), len(ending)))

    model = tiny_gpt2()
    before = run_tasks(model, tokenizer, "hellaswag", data_dir=DATA, limit=3)["hellaswag"]
    assert before["acc"] < 1.0 or before["acc_norm"] < 1.0  # not already perfect by luck
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        total = 0.0
        for ids, n in examples:
            logits = model(input_ids=ids[:, :-1], logits_to_keep=n).logits[0]  # (n, V)
            loss = F.cross_entropy(logits, ids[0, -n:])
            loss.backward()
            total += loss.item() / len(examples)
        optimizer.step()
        optimizer.zero_grad()
    assert total < 0.6, f"the tiny model did not memorise the endings (loss {total:.3f})"

    # the nanogpt scoring conditions on the raw ctx: it was never trained on, yet the endings carry over
    for scoring in ("harness", "nanogpt"):
        after = run_tasks(model, tokenizer, "hellaswag", data_dir=DATA, limit=3, scoring=scoring)["hellaswag"]
        assert (after["acc"], after["acc_norm"]) == (1.0, 1.0), scoring
    assert model.training  # run_tasks gave the model back in the mode it found it


def test_random_weights_near_chance(tokenizer):
    model = tiny_gpt2()
    for scoring in ("harness", "nanogpt"):
        result = run_tasks(model, tokenizer, "hellaswag", data_dir=DATA, limit=48, batch_size=48, scoring=scoring)["hellaswag"]
        # 4 choices: chance is 0.25; with 48 items the standard error is ~0.063
        assert 0.08 < result["acc"] < 0.45 and 0.08 < result["acc_norm"] < 0.45, (scoring, result)
