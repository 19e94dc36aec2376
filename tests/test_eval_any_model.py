"""eval/ on any causal LM, where it must follow lm-evaluation-harness: a Llama-style tokenizer's BOS as the
context prefix and in every context, empty contexts, a context length nested under text_config, log-softmax in
float32 or in the model's dtype, standard errors for every metric, and one progress bar per task."""

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlavaConfig, PreTrainedTokenizerFast

from eval import run_tasks
from eval.loglikelihood import Request, _token_logprobs, encode_pairs, max_length_of, prefix_token_id, score_requests
from eval.tasks import bootstrap_stderr, evaluate_task

TEXTS = ["The cat sat on the mat.", "A dog ran in the park.", "Energy is the capacity to do work."] * 4


@pytest.fixture(scope="module")
def llama_like():
    """A byte-level BPE that, like Llama's, puts <s> before every encoded text; </s> ends documents."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=1)
    return tokenizer, LlamaForCausalLM(config).eval()


def _reference(model, request: Request) -> float:
    """The continuation's log-likelihood from one unbatched forward pass over context + continuation."""
    ids = torch.tensor([request.context + request.continuation])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    n = len(request.continuation)
    return logp[-n:].gather(-1, torch.tensor(request.continuation)[:, None]).sum().item()


def test_bos_prefix_and_default_special_tokens(llama_like):
    tokenizer, model = llama_like
    bos = tokenizer.bos_token_id
    assert prefix_token_id(tokenizer) == bos != tokenizer.eos_token_id
    plain = tokenizer("The cat sat", add_special_tokens=False).input_ids
    full, empty, blank = encode_pairs(tokenizer, [("The cat sat", " on the mat."), ("", "The cat"), ("  ", "A dog")])
    assert full.context == [bos] + plain  # the tokenizer's own BOS, as lm-eval keeps default special tokens
    assert full.continuation == tokenizer("The cat sat on the mat.", add_special_tokens=False).input_ids[len(plain):]
    assert empty == Request([bos], tokenizer("The cat", add_special_tokens=False).input_ids)  # no second BOS
    assert blank == Request([bos], tokenizer("  A dog", add_special_tokens=False).input_ids)  # whitespace-only context
    scores = score_requests(model, [full, empty, blank], max_length=64, batch_size=2)
    for request, score in zip((full, empty, blank), scores):
        assert score.loglikelihood == pytest.approx(_reference(model, request), abs=1e-4)


def test_runs_every_kind_of_task_on_a_llama_model(llama_like, tmp_path):
    tokenizer, model = llama_like
    docs = {"hellaswag": [{"activity_label": "Pets", "ctx_a": "The cat sat", "ctx_b": "", "ctx": "", "label": 0,
                           "endings": ["on the mat.", "in the park.", "to do work.", "ran."]}],
            "wikitext": [{"page": " = Cats = \n The cat sat on the mat . \n"}]}
    for scoring in ("harness", "nanogpt"):  # nanogpt's raw ctx is empty here: the BOS prefix stands in for it
        out = evaluate_task("hellaswag", docs["hellaswag"], model, tokenizer, scoring, 4, 64, None, torch.device("cpu"), None)
        assert out["n"] == 1 and out["acc"] in (0.0, 1.0)
    out = evaluate_task("wikitext", docs["wikitext"], model, tokenizer, "harness", 4, 64, None, torch.device("cpu"), None)
    assert math.isfinite(out["word_perplexity"]) and out["n"] == 1


def test_max_length_under_text_config(llama_like):
    tokenizer, model = llama_like

    class Multimodal:  # a model whose config keeps the context length under text_config (Llava, Gemma 3, ...)
        config = LlavaConfig(text_config=LlamaConfig(max_position_embeddings=77).to_dict())

    assert max_length_of(Multimodal(), tokenizer) == 77
    assert max_length_of(model, tokenizer) == 64


@pytest.mark.parametrize("few", [True, False])
def test_token_logprobs_upcast_and_model_dtype(few):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 50) * 4
    rows, cols = (torch.tensor([0, 2]), torch.tensor([4, 1])) if few else (torch.arange(3).repeat_interleave(5), torch.arange(5).repeat(3))
    target = torch.randint(0, 50, rows.shape)
    expected = logits[rows, cols].log_softmax(-1).gather(-1, target[:, None])[:, 0]
    ll, greedy = _token_logprobs(logits, rows, cols, target, upcast=True)
    torch.testing.assert_close(ll, expected, atol=1e-5, rtol=0)
    assert greedy.tolist() == (logits[rows, cols].argmax(-1) == target).tolist()
    half = logits.bfloat16()
    up, _ = _token_logprobs(half, rows, cols, target, upcast=True)
    down, _ = _token_logprobs(half, rows, cols, target, upcast=False)
    lm_eval = half[rows, cols].log_softmax(-1).gather(-1, target[:, None])[:, 0].float()  # lm-eval: model dtype
    torch.testing.assert_close(down, lm_eval, atol=0, rtol=0)
    torch.testing.assert_close(up, half[rows, cols].float().log_softmax(-1).gather(-1, target[:, None])[:, 0], atol=1e-5, rtol=0)
    assert not torch.equal(up, down)  # bf16 rounding shows: the choice is recorded in the results


def test_bootstrap_stderr_matches_the_analytic_one_for_a_mean():
    x = np.random.default_rng(0).normal(size=400)
    analytic = x.std(ddof=1) / math.sqrt(len(x))
    assert bootstrap_stderr(lambda v: v.mean(-1), [x], iters=20_000) == pytest.approx(analytic, rel=0.03)
    assert bootstrap_stderr(lambda v: v.mean(-1), [x[:1]]) is None


def test_every_metric_has_a_stderr_and_each_task_a_progress_bar(llama_like, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import SHARED
    from modeling_gpt.tokenizer import gpt2_tokenizer

    if not (SHARED / "evals").is_dir():
        pytest.skip(f"the evaluation data is not at {SHARED}")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128)).eval()
    tokenizer = gpt2_tokenizer(SHARED / "gpt2-tokenizer")
    results = run_tasks(model, tokenizer, "lambada,piqa,wikitext", data_dir=SHARED, limit=3, batch_size=4, progress=True)
    for task, metrics in results.items():
        for name in [k for k in metrics if k != "n" and not k.endswith("_stderr")]:
            assert metrics[f"{name}_stderr"] is not None and metrics[f"{name}_stderr"] >= 0, (task, name)
    err = capsys.readouterr().err
    for task in ("lambada_openai", "piqa", "wikitext"):
        assert f"{task}: 100%" in err and "seq/s" in err
    run_tasks(model, tokenizer, "piqa", data_dir=SHARED, limit=1)
    assert "piqa" not in capsys.readouterr().err  # progress=False (the trainer's evaluations): no bar
