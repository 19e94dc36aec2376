"""eval/: HellaSwag preprocessing and both scorings on hand-checked examples, log-likelihoods against an
unbatched computation, batch-size invariance, rank splitting, rolling windows, val loss, results JSON."""

import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import accelerate.utils
import token_shards
from eval import run_tasks, save_results, val_loss
from eval.data import hellaswag_preprocess, load_task_docs, split_articles, wikitext_detokenize
from eval.loglikelihood import Request, encode_pair, merge, rolling_windows, score_requests, shard
from eval.results import format_table
from eval.tasks import evaluate_task, hellaswag_requests, resolve_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gpt2-tokenizer").is_dir(), reason=f"shared data not found at {DATA}")


@pytest.fixture(scope="module")
def tokenizer():
    if not (DATA / "gpt2-tokenizer").is_dir():
        pytest.skip(f"GPT-2 tokenizer not found at {DATA / 'gpt2-tokenizer'}")
    from modeling_gpt.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer(DATA / "gpt2-tokenizer")


def tiny_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_gpt import GPTConfig, GPTForCausalLM

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256)).eval()
    ours = GPTForCausalLM(GPTConfig.from_preset("tiny")).eval()
    return {"gpt2": gpt2, "modeling_gpt": ours}


@pytest.fixture(scope="module")
def models():
    return tiny_models()


class UnigramLM(torch.nn.Module):
    """A 'model' whose next-token distribution ignores the context: log p(token) = logp[token]."""

    def __init__(self, logp: torch.Tensor, n_positions: int = 64):
        super().__init__()
        self.register_buffer("logp", logp)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so run_tasks can find the device
        self.config = SimpleNamespace(n_positions=n_positions)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.logp.expand(*input_ids.shape, -1))


# -- HellaSwag preprocessing and scoring, by hand -----------------------------------------------------

def test_hellaswag_preprocess_by_hand():
    text = " Cooking [title] How to boil  eggs. [step] Fill a pot. "
    # strip; " [title]" -> ". "; [..] removed; double spaces collapsed once
    assert hellaswag_preprocess(text) == "Cooking. How to boil eggs. Fill a pot."
    assert hellaswag_preprocess("no markers here") == "no markers here"


def test_harness_requests_text(tokenizer):
    doc = {"activity_label": "Cooking", "ctx_a": "A man [step] boils water.", "ctx_b": "then he", "ctx": "unused",
           "endings": ["adds [title] salt.", "sings."], "label": 0}
    requests, groups = hellaswag_requests([doc], tokenizer, "harness")
    texts = [(tokenizer.decode(r.context), tokenizer.decode(r.continuation)) for r in requests]
    # query = preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()); choice = " " + preprocess(ending)
    assert texts == [("Cooking: A man boils water. Then he", " adds. salt."), ("Cooking: A man boils water. Then he", " sings.")]
    # acc_norm divides by the choice's characters without the joining space (lm-eval)
    assert groups == [(2, [len("adds. salt."), len("sings.")], 0)]


def test_nanogpt_requests_tokenize_separately(tokenizer):
    doc = {"activity_label": "x", "ctx_a": "", "ctx_b": "", "ctx": "A man is sitting on a roof. he",
           "endings": ["is using wrap.", "starts pulling."], "label": 1}
    requests, groups = hellaswag_requests([doc], tokenizer, "nanogpt")
    assert requests[0].context == tokenizer.encode("A man is sitting on a roof. he")
    assert requests[1].continuation == tokenizer.encode(" starts pulling.")
    assert groups == [(2, None, 1)]


def test_encode_pair_like_lm_eval(tokenizer):
    # trailing context whitespace moves onto the continuation; whole string split at the context length
    r = encode_pair(tokenizer, "The cat ", "sat")
    assert r.context == tokenizer.encode("The cat") and r.continuation == tokenizer.encode(" sat")
    assert encode_pair(tokenizer, "", "Hello").context == [tokenizer.eos_token_id]


@needs_data
def test_both_scorings_by_hand(tokenizer):
    cat, elephant = tokenizer.encode(" cat"), tokenizer.encode(" elephant")
    assert len(cat) == 1 and len(elephant) == 1
    probs = torch.zeros(len(tokenizer))
    probs[cat[0]], probs[elephant[0]] = math.exp(-1.0), math.exp(-1.2)
    probs[0] = 1 - probs.sum()  # the rest of the mass on one other token
    model = UnigramLM(probs.log())
    doc = {"activity_label": "Zoo", "ctx_a": "A", "ctx_b": "", "ctx": "A", "endings": ["cat cat", "elephant"], "label": 0}
    # sums: "cat cat" = -2.0, "elephant" = -1.2 -> acc picks 1
    # per character (harness): -2.0/7 = -0.286 vs -1.2/8 = -0.150 -> 1; per token (nanogpt): -1.0 vs -1.2 -> 0
    harness = evaluate_task("hellaswag", [doc], model, tokenizer, "harness", 4, 64, None, "cpu", None)
    nanogpt = evaluate_task("hellaswag", [doc], model, tokenizer, "nanogpt", 4, 64, None, "cpu", None)
    assert (harness["acc"], harness["acc_norm"]) == (0.0, 0.0)
    assert (nanogpt["acc"], nanogpt["acc_norm"]) == (0.0, 1.0)
    scores = score_requests(model, hellaswag_requests([doc], tokenizer, "nanogpt")[0], 64)
    assert [s.loglikelihood for s in scores] == pytest.approx([-2.0, -1.2], abs=1e-5)
    assert [s.num_tokens for s in scores] == [2, 1]


# -- log-likelihoods: batched equals unbatched --------------------------------------------------------

def reference_loglikelihood(model, request: Request, max_length: int) -> float:
    """One sequence, no padding, full log_softmax: the plain computation."""
    ids = (request.context + request.continuation)[-(max_length + 1):]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids[:-1]])).logits[0].float().log_softmax(-1)
    targets = torch.tensor(ids[1:])
    per_token = logp[torch.arange(len(targets)), targets]
    return per_token[-len(request.continuation):].sum().item()


@needs_data
@pytest.mark.parametrize("name", ["gpt2", "modeling_gpt"])
@pytest.mark.parametrize("scoring", ["harness", "nanogpt"])
def test_batched_equals_unbatched(models, tokenizer, name, scoring):
    model = models[name]
    docs = load_task_docs("hellaswag", DATA, limit=5)
    requests, _ = hellaswag_requests(docs, tokenizer, scoring)
    requests.append(Request(list(range(100, 140)), list(range(200, 230))))  # longer than max_length: left-truncated
    expected = [reference_loglikelihood(model, r, 48) for r in requests]
    for batch_size in (1, 7):
        scores = score_requests(model, requests, max_length=48, batch_size=batch_size)
        torch.testing.assert_close([s.loglikelihood for s in scores], expected, atol=1e-4, rtol=1e-5)


@needs_data
def test_metrics_independent_of_batch_size(models, tokenizer):
    model = models["gpt2"]
    runs = [run_tasks(model, tokenizer, ["hellaswag", "winogrande", "lambada"], data_dir=DATA, limit=6, batch_size=b)
            for b in (1, 5, 64)]
    for other in runs[1:]:
        for task, metrics in runs[0].items():
            for key, value in metrics.items():
                assert other[task][key] == pytest.approx(value, rel=1e-5), (task, key)


# -- splitting across ranks ---------------------------------------------------------------------------

def test_shard_and_merge():
    parts = [shard(10, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))
    gathered = [(i, f"v{i}") for p in reversed(parts) for i in p]
    assert merge(gathered, 10) == [f"v{i}" for i in range(10)]
    with pytest.raises(RuntimeError, match="gathered 9 results for 10"):
        merge(gathered[1:], 10)


class ThreadWorld:
    """`world_size` ranks as threads of this process; gather_object/reduce exchange through a barrier."""

    def __init__(self, world_size: int):
        self.world_size, self.barrier = world_size, threading.Barrier(world_size)
        self.slots, self.local = [None] * world_size, threading.local()

    def _all(self, obj):
        self.slots[self.local.rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def gather_object(self, obj):
        return [x for part in self._all(obj) for x in part]

    def reduce(self, tensor, reduction="sum"):
        return sum(self._all(tensor))

    def run(self, fn):
        """fn(accelerator) on every rank; returns the per-rank results."""
        results = [None] * self.world_size

        def target(rank):
            self.local.rank = rank
            accelerator = SimpleNamespace(process_index=rank, num_processes=self.world_size,
                                          device=torch.device("cpu"), reduce=self.reduce)
            results[rank] = fn(accelerator)

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


@needs_data
def test_ranks_split_and_gather_equal_one_process(models, tokenizer, monkeypatch):
    model = models["gpt2"]
    docs = load_task_docs("hellaswag", DATA, limit=5)
    requests, _ = hellaswag_requests(docs, tokenizer, "harness")
    single = score_requests(model, requests, 256, batch_size=3)
    world = ThreadWorld(3)
    monkeypatch.setattr(accelerate.utils, "gather_object", world.gather_object)
    forwards = [0, 0, 0]
    hook = model.register_forward_hook(lambda *a: forwards.__setitem__(world.local.rank, forwards[world.local.rank] + 1))
    try:
        per_rank = world.run(lambda acc: score_requests(model, requests, 256, batch_size=3, accelerator=acc))
    finally:
        hook.remove()
    for merged in per_rank:  # every rank gets every score, in request order
        torch.testing.assert_close([s.loglikelihood for s in merged], [s.loglikelihood for s in single], atol=1e-5, rtol=0)
        assert [s.is_greedy for s in merged] == [s.is_greedy for s in single]
    # 20 requests over 3 ranks: 7, 7, 6 -> 3, 3, 2 batches of 3; the short rank runs one padding pass
    assert forwards == [3, 3, 3]


# -- WikiText: windows, articles, detokenizer ---------------------------------------------------------

def test_rolling_windows_by_hand():
    tokens = list(range(1, 11))
    P = 0
    windows = rolling_windows(tokens, P, max_length=4, stride=4)
    # lm-eval's disjoint windows: the last one is filled with earlier tokens as context
    assert windows == [Request([P], [1, 2, 3, 4]), Request([4], [5, 6, 7, 8]), Request([6, 7, 8], [9, 10])]
    for stride in (1, 3, 4):
        windows = rolling_windows(tokens, P, max_length=4, stride=stride)
        assert [t for w in windows for t in w.continuation] == tokens  # every token scored once
        assert all(len(w.context) + len(w.continuation) <= 5 for w in windows)  # model input <= max_length
    with pytest.raises(ValueError, match="stride must be in"):
        rolling_windows(tokens, P, max_length=4, stride=5)


def test_rolling_loglikelihood_equals_full_sequence(models):
    """A document that fits one window: the windowed sum is the plain sequence log-likelihood."""
    model = models["gpt2"]
    tokens = list(range(300, 340))
    scores = score_requests(model, rolling_windows(tokens, 50256, 64, 64), 64)
    assert sum(s.loglikelihood for s in scores) == pytest.approx(
        reference_loglikelihood(model, Request([50256], tokens), 64), abs=1e-4)
    # a short window sliding by half its length still scores every token once
    strided = score_requests(model, rolling_windows(tokens, 50256, 16, 8), 16)
    assert sum(s.num_tokens for s in strided) == len(tokens)


def test_wikitext_articles_and_detokenizer():
    lines = [" = Title A = ", " Some text @-@ like this , ok . ", " = = Section = = ", " More . ", " = Title B = ", " End "]
    pages = split_articles(lines)
    assert pages == [" = Title A = \n Some text @-@ like this , ok . \n = = Section = = \n More . ", " = Title B = \n End "]
    assert wikitext_detokenize("a cat @-@ like animal , 3 @.@ 5 kg . end") == "a cat-like animal, 3.5 kg. end"


@needs_data
def test_local_task_formats():
    piqa = load_task_docs("piqa", DATA, limit=3)
    assert all(d["query"].startswith("Question: ") and d["query"].endswith("?\nAnswer:") for d in piqa[:1])
    arc = load_task_docs("arc_easy", DATA, limit=2)
    assert arc[0]["query"].endswith("\nAnswer:") and len(arc[0]["choices"]) == 4
    assert len(load_task_docs("wikitext", DATA)) == 62  # the articles of WikiText-2's test split
    assert len(load_task_docs("hellaswag", DATA)) == 10042


# -- validation loss over token shards ----------------------------------------------------------------

def write_val_shards(folder: Path, n_tokens: int = 3000) -> np.ndarray:
    tokens = np.random.default_rng(0).integers(0, 50257, n_tokens).astype(np.uint16)
    sha = token_shards.write_shard(folder / "val_000000.bin", tokens)
    manifest = {"vocab_size": 50257, "eot_id": 50256, "tokenizer": {"name": "gpt2", "hash": "test"},
                "shards": [{"file": "val_000000.bin", "split": "val", "tokens": n_tokens, "docs": 1, "sha256": sha}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return tokens.astype(np.int64)


def test_val_loss_matches_stream_and_two_ranks(models, tmp_path):
    model = models["modeling_gpt"]
    stream = torch.from_numpy(write_val_shards(tmp_path))
    B, T, n = 2, 32, 3
    expected = []
    for k in range(n):  # the val split read in order, chunks of B*T+1 tokens overlapping by one
        chunk = stream[k * B * T: k * B * T + B * T + 1]
        with torch.no_grad():
            logits = model(input_ids=chunk[:-1].view(B, T)).logits
        expected.append(F.cross_entropy(logits.flatten(0, 1), chunk[1:]).item())
    result = val_loss(model, tmp_path, B, T, num_batches=n)
    assert result["val_loss"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert result["val_ppl"] == pytest.approx(math.exp(np.mean(expected)), rel=1e-5)

    # two ranks: rank 0 reads batches 0 and 2, rank 1 reads 1 and 3 (3 runs only to keep ranks in step)
    for two in ThreadWorld(2).run(lambda acc: val_loss(model, tmp_path, B, T, n, acc)):
        assert two["val_loss"] == pytest.approx(result["val_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="num_batches=999"):
        val_loss(model, tmp_path, B, T, num_batches=999)


# -- results and errors -------------------------------------------------------------------------------

def test_save_results_json(tmp_path):
    results = {"hellaswag": {"acc": 0.25, "acc_stderr": 0.01, "acc_norm": 0.3, "acc_norm_stderr": 0.02, "n": 100},
               "wikitext": {"word_perplexity": 40.0, "n": 62}}
    path = save_results(results, tmp_path / "sub" / "results.json", model_name="tiny", scoring="nanogpt")
    data = json.loads(path.read_text())
    assert data["results"]["hellaswag"]["acc_norm"] == 0.3
    entry = next(e for e in data["entries"] if e["metric"] == "acc_norm")
    assert entry == {"task": "hellaswag", "metric": "acc_norm", "value": 0.3, "stderr": 0.02, "n": 100, "model": "tiny",
                     "scoring": "nanogpt", "dataset": "Rowan/hellaswag", "dataset_config": None,
                     "dataset_split": "validation", "dataset_title": "HellaSwag", "data_source": "hub", "partial": False}
    assert next(e for e in data["entries"] if e["task"] == "wikitext")["scoring"] == "harness"
    assert "_timestamp" in data and data["model"] == "tiny"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temp or lock file left
    table = format_table(results)
    assert "acc_norm" in table and "± 0.0200" in table and "word_perplexity" in table


def test_bad_input_errors(models, tokenizer):
    with pytest.raises(ValueError, match="unknown task 'hellaswog'"):
        resolve_tasks("hellaswag,hellaswog")
    assert resolve_tasks("lambada, hellaswag,lambada_openai") == ["lambada_openai", "hellaswag"]
    with pytest.raises(ValueError, match="unknown scoring 'karpathy'"):
        run_tasks(models["gpt2"], tokenizer, "hellaswag", data_dir=DATA, scoring="karpathy")
    with pytest.raises(ValueError, match="limit must be a positive"):
        run_tasks(models["gpt2"], tokenizer, "hellaswag", data_dir=DATA, limit=0)
    with pytest.raises(FileNotFoundError, match="hellaswag_val.jsonl"):
        run_tasks(models["gpt2"], tokenizer, "hellaswag", data_dir="/nonexistent", limit=1)
