"""gpt-push: the exported folder loads in a process without the project (remote code and native), the card
parses with the run's numbers, checkpoints of every accelerate layout load, bad input is refused."""

import json
import os
import re
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import push_to_hub
from eval import save_results
from modeling_gpt import GPTConfig, GPTForCausalLM

TEXTS = [
    "The cat sat on the mat and looked at the garden.",
    "In physics, energy is the capacity to do work.",
    "The meaning of life is to learn and to help others.",
    "Rivers carry water from the mountains to the sea.",
]
EVAL = {
    "hellaswag": {"acc": 0.2512, "acc_stderr": 0.0043, "acc_norm": 0.2634, "acc_norm_stderr": 0.0044, "n": 10042},
    "lambada_openai": {"acc": 0.1203, "acc_stderr": 0.0045, "perplexity": 312.5, "n": 5153},
}


def bpe_tokenizer(texts, vocab_size):
    """A small byte-level BPE trained on the texts, like a custom tokenizer of the project."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def greedy(model, tokenizer, prompt, n=12):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder like the trainer's: final/ (a tiny model that memorised TEXTS), metrics.jsonl, eval JSON, a plot."""
    root = tmp_path_factory.mktemp("run")
    tokenizer = bpe_tokenizer(TEXTS, 400)
    eot = tokenizer.eos_token_id
    config = GPTConfig.from_preset("tiny", vocab_size=len(tokenizer), bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = GPTForCausalLM(config)
    rows = [tokenizer(text).input_ids + [eot] for text in TEXTS]  # one text per row, from position 0 like a prompt
    T = max(map(len, rows))
    ids = torch.tensor([r + [eot] * (T - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (T - len(r)) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        model(ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(root / "final")
    tokenizer.save_pretrained(root / "final")
    with open(root / "metrics.jsonl", "w") as f:
        for step in range(1, 61):
            row = dict(step=step, loss=4.0 / step, lr=1e-2, tokens=step * 8192, grad_norm=1.0)
            if step % 20 == 0:
                row.update(tokens_per_sec=8192 * 20 / 10.0, val_loss=5.0 / step)
            f.write(json.dumps(row) + "\n")
    (root / "checkpoints" / "step_0000060").mkdir(parents=True)
    state = dict(step=60, tokens=60 * 8192, world_size=2, total_batch_tokens=8192, seq_len=256)
    (root / "checkpoints" / "step_0000060" / "trainer_state.json").write_text(json.dumps(state))
    (root / "final" / "training_record.json").write_text(json.dumps(state))  # the trainer's record of final/
    save_results(EVAL, root / "eval_results.json", model_name="tiny", scoring="harness")
    (root / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return dict(root=root, model=model, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """remote: our code; native: GPT2LMHeadModel; llama: the modern variant (random weights) as LlamaForCausalLM."""
    out = tmp_path_factory.mktemp("exported")
    eot = run["tokenizer"].eos_token_id
    modern = GPTConfig.from_preset("gpt2.5", n_layer=2, n_head=4, n_embd=64, n_positions=256,
                                   vocab_size=len(run["tokenizer"]), bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    GPTForCausalLM(modern).save_pretrained(out / "modern_final")
    run["tokenizer"].save_pretrained(out / "modern_final")
    for kind, source, extra in (("remote", run["root"] / "final", []), ("native", run["root"] / "final", ["--native"]),
                                ("llama", out / "modern_final", ["--native", "--prompts"])):
        push_to_hub.main(["--checkpoint", str(source), "--repo-id", "me/tiny-gpt", "--dry-run",
                          "--output-dir", str(out / kind), *extra])
    return out


def test_fixture_model_learned_the_texts(run):
    assert greedy(run["model"], run["tokenizer"], "The cat sat") == TEXTS[0]


def test_folder_contents(exported, run):
    files = {p.relative_to(exported / "remote").as_posix() for p in (exported / "remote").rglob("*") if p.is_file()}
    assert files == {"config.json", "configuration_gpt.py", "modeling_gpt.py", "convert.py", "network.py", "loss.py", "model.safetensors",
                     "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "plots/loss.png",
                     ".gpt-push-export.json"}  # the marker --overwrite looks for; never uploaded
    config = json.loads((exported / "remote" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"
    assert (exported / "remote" / "plots" / "loss.png").read_bytes() == (run["root"] / "loss.png").read_bytes()
    eot = run["tokenizer"].eos_token_id
    for kind in ("remote", "native"):
        gen = json.loads((exported / kind / "generation_config.json").read_text())
        assert (gen["do_sample"], gen["top_k"], gen["temperature"]) == (True, 50, 1.0)
        assert gen["eos_token_id"] == gen["pad_token_id"] == eot
    native = json.loads((exported / "native" / "config.json").read_text())
    assert native["model_type"] == "gpt2" and "auto_map" not in native
    assert not list((exported / "native").glob("*.py"))
    umask = os.umask(0)
    os.umask(umask)
    for path in [exported / "remote", *(exported / "remote").rglob("*")]:  # readable by a shared cluster's teammates
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path
    for kind in ("remote", "native"):
        tokenizer_config = json.loads((exported / kind / "tokenizer_config.json").read_text())
        assert tokenizer_config["model_max_length"] == 256  # n_positions, not 1e30
        assert tokenizer_config["pad_token"] == tokenizer_config["eos_token"] == "<|endoftext|>"
        assert tokenizer_config["padding_side"] == "left"
        assert tokenizer_config["tokenizer_class"] == "TokenizersBackend" or "auto_map" not in tokenizer_config
        assert not {"is_local", "local_files_only"} & tokenizer_config.keys()


ISOLATED = """
import contextlib, io, json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
job = json.loads(sys.argv[1])
out = {}
for kind, folder in job["folders"].items():
    remote = kind == "remote"
    trust = {"trust_remote_code": True} if remote else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **trust)
    model = AutoModelForCausalLM.from_pretrained(folder, **trust).eval()
    with torch.no_grad():
        logits = model(torch.tensor(job["ids"])).logits
    generator = pipeline("text-generation", model=folder, trust_remote_code=remote)
    text = generator(job["prompt"], max_new_tokens=12, do_sample=False)[0]["generated_text"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(job["snippets"][kind], {})
    out[kind] = {"class": type(model).__module__ + "." + type(model).__name__, "logits": logits.tolist(),
                 "text": text, "snippet_output": printed.getvalue()}
Path(job["result"]).write_text(json.dumps(out))
"""


def test_with_the_project_imported_auto_tokenizer_asks_nothing(exported):
    """The README's workaround for transformers' remote-code prompt: once `import modeling_gpt` has registered the
    model type, AutoTokenizer loads the export's tokenizer with no question and no warning (stdin closed)."""
    import subprocess
    import sys

    code = ("import sys, modeling_gpt\nfrom transformers import AutoTokenizer\n"
            "print(len(AutoTokenizer.from_pretrained(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", code, str(exported / "remote")], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(len(PreTrainedTokenizerFast.from_pretrained(exported / "remote")))
    assert "Do you wish" not in result.stdout + result.stderr and "instantiate a model" not in result.stderr


def usage_code(folder: Path) -> str:
    card = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert code.count('"me/tiny-gpt"') == 2  # the tokenizer's and the model's
    return code.replace('"me/tiny-gpt"', repr(str(folder)))


def test_loads_and_generates_in_a_process_without_the_project(exported, run, tmp_path, run_without_project):
    elsewhere = tmp_path / "copies"
    folders = {}
    for kind in ("remote", "native", "llama"):
        shutil.copytree(exported / kind, elsewhere / kind)  # the folder alone, nothing else of the project
        folders[kind] = str(elsewhere / kind)
    ids = [run["tokenizer"](TEXTS[1]).input_ids]
    job = dict(folders=folders, ids=ids, prompt="The cat sat", result=str(tmp_path / "result.json"),
               snippets={kind: usage_code(Path(f)) for kind, f in folders.items()})
    result = run_without_project(ISOLATED, json.dumps(job))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr  # nothing asks the user
    out = json.loads((tmp_path / "result.json").read_text())
    with torch.no_grad():
        expected = run["model"](torch.tensor(ids)).logits
    assert out["remote"]["class"].startswith("transformers_modules.") and out["remote"]["class"].endswith(".GPTForCausalLM")
    assert out["native"]["class"] == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert out["llama"]["class"] == "transformers.models.llama.modeling_llama.LlamaForCausalLM"
    for kind in ("remote", "native"):
        torch.testing.assert_close(torch.tensor(out[kind]["logits"]), expected, atol=1e-5, rtol=1e-5)
        assert out[kind]["text"] == TEXTS[0]  # the pipeline continues the memorised sentence
    modern = GPTForCausalLM.from_pretrained(exported / "modern_final").eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["llama"]["logits"]), modern(torch.tensor(ids)).logits, atol=1e-5, rtol=1e-5)
    for kind in ("remote", "native", "llama"):
        assert out[kind]["snippet_output"].startswith("The meaning of life is")


def test_model_card(exported, run):
    card = ModelCard.load(exported / "remote" / "README.md")
    data = card.data
    # the fixture's run recorded no data source: no dataset is claimed
    assert (data.license, data.datasets, data.pipeline_tag, data.library_name) == (
        "mit", None, "text-generation", "transformers")
    assert "pretrained from scratch on data the run did not record" in card.text and "fineweb-edu" not in data.tags
    assert "custom_code" in data.tags
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {
        ("Rowan/hellaswag", "acc"): 0.2512, ("Rowan/hellaswag", "acc_norm"): 0.2634,
        ("EleutherAI/lambada_openai", "acc"): 0.1203, ("EleutherAI/lambada_openai", "perplexity"): 312.5,
    }
    text = card.text
    assert "| Tokens seen | 491,520 (491.52K) |" in text and "| Optimizer steps | 60 |" in text
    assert "| Batch | 8,192 tokens per step in sequences of 256 |" in text
    assert "| Training time | 0.01 h |" in text  # 3 log intervals of 20 steps at 10 s each
    assert "| Final validation loss | 0.0833 (step 60) |" in text and "| Hardware | 2 process(es) |" in text
    assert "trust_remote_code=True" in text and "![loss](plots/loss.png)" in text
    assert "## Sample completions" in text and "**The meaning of life is**" in text
    native = ModelCard.load(exported / "native" / "README.md")
    assert "trust_remote_code" not in native.text and "custom_code" not in native.data.tags


def _card(run, data_source=None, entries=(), init_from=None):
    source = push_to_hub.Source(run["model"], run["tokenizer"], trainer_state={"config": {"init_from": init_from}},
                                data_source=data_source)
    return push_to_hub.build_card(source, "me/tiny-gpt", native=False, entries=list(entries), samples=[], plots=[],
                                  license="mit", generation={"top_k": 50, "temperature": 1.0})


def test_model_card_data_comes_from_the_manifest(run):
    hub = {"dataset": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train", "data_files": None,
           "text_column": "text", "revision": "87f0914"}
    card = _card(run, hub)
    assert card.data.datasets == ["HuggingFaceFW/fineweb-edu"] and "fineweb-edu" in card.data.tags
    assert ("pretrained from scratch on [HuggingFaceFW/fineweb-edu](https://huggingface.co/datasets/HuggingFaceFW/"
            "fineweb-edu) (name `sample-10BT`, split `train`, revision `87f0914`)") in card.text
    local = dict(hub, dataset="../shared/data/fineweb-edu-mini", revision=None)
    card = _card(run, local, init_from="openai-community/gpt2")
    assert card.data.datasets is None and "fineweb-edu" not in card.data.tags
    assert "fine-tuned from `openai-community/gpt2` on a local copy of a dataset, `../shared/data/fineweb-edu-mini`" in card.text
    files = dict(hub, dataset=None, name=None, split=None, data_files=["a.parquet", "b.parquet"], revision=None)
    assert "on local files `a.parquet`, `b.parquet`" in _card(run, files).text


def test_partial_and_local_evaluations_stay_out_of_model_index(run, tmp_path):
    full = {"hellaswag": {"acc": 0.25, "acc_stderr": 0.004, "acc_norm": 0.26, "acc_norm_stderr": 0.004, "n": 10042}}
    part = {"piqa": {"acc": 0.55, "acc_stderr": 0.05, "acc_norm": 0.56, "acc_norm_stderr": 0.05, "n": 100}}
    save_results(full, tmp_path / "full.json", model_name="tiny", scoring="nanogpt", config={"limit": None, "data_dir": None})
    save_results(part, tmp_path / "part.json", model_name="tiny", config={"limit": 100, "data_dir": None})
    save_results(part, tmp_path / "local.json", model_name="tiny", config={"limit": None, "data_dir": "../shared/data"})
    entries = push_to_hub.read_eval_entries([tmp_path / "full.json", tmp_path / "part.json", tmp_path / "local.json"])
    card = _card(run, entries=entries)
    published = {(r.dataset_type, r.metric_type, r.metric_config, r.dataset_args["num_items"]) for r in card.data.eval_results}
    assert published == {("Rowan/hellaswag", "acc", "nanogpt", 10042), ("Rowan/hellaswag", "acc_norm", "nanogpt", 10042)}
    assert "| PIQA | acc | 0.5500 ± 0.0500 | 100 (partial) | Hub | harness |" in card.text
    assert "| PIQA | acc | 0.5500 ± 0.0500 | 100 | local copy `../shared/data/evals/piqa.jsonl` | harness |" in card.text
    assert "| HellaSwag | acc_norm | 0.2600 ± 0.0040 | 10,042 | Hub | nanogpt |" in card.text


def test_sharded_weights(run, tmp_path):
    out = push_to_hub.export(push_to_hub.load_source(run["root"] / "final"), tmp_path / "out", "me/tiny-gpt",
                             max_shard_size="100KB", prompts=[])
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file() and not (out / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = torch.tensor([run["tokenizer"](TEXTS[2]).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, run["model"](ids).logits, atol=0, rtol=0)


def _accelerate_save_state(model, folder):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    accelerator.save_state(str(folder))
    accelerator.free_memory()
    return prepared


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process, as intended
@pytest.mark.parametrize("layout", ["save_state", "ddp_prefix", "fsdp_full", "fsdp_sharded"])
def test_checkpoint_layouts(run, tmp_path, layout):
    folder = tmp_path / "run" / "checkpoints" / "step_0000060"
    folder.mkdir(parents=True)
    shutil.copytree(run["root"] / "final", tmp_path / "run" / "final")  # the config and tokenizer are found here
    (tmp_path / "run" / "metrics.jsonl").write_text((run["root"] / "metrics.jsonl").read_text())
    model = GPTForCausalLM.from_pretrained(run["root"] / "final")
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    if layout == "save_state":
        _accelerate_save_state(model, folder)
        assert (folder / "model.safetensors").is_file()
    elif layout == "ddp_prefix":
        save_file({"module." + k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    elif layout == "fsdp_full":
        torch.save(state, folder / "pytorch_model_fsdp.bin")
    else:
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": state}, checkpoint_id=folder / "pytorch_model_fsdp_0", no_dist=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 40, "tokens": 40 * 8192}))
    source = push_to_hub.load_source(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(source.model.state_dict()[k], v), k
    assert source.run_dir == tmp_path / "run"
    assert [r["step"] for r in source.metrics][-1] == 40  # the card describes the checkpoint, not the run's end
    assert len(source.tokenizer) == len(run["tokenizer"])


def test_checkpoint_with_the_trainers_state(run, tmp_path, capsys):
    """What train_accelerate.py writes: model config, tokenizer hash, hardware and time in trainer_state.json;
    the tokenizer only with the token shards (data_dir/tokenizer), no final/ yet."""
    from token_shards import tokenizer_hash

    folder = tmp_path / "run" / "checkpoints" / "step_0000060"
    data_dir = tmp_path / "data"
    run["tokenizer"].save_pretrained(data_dir / "tokenizer")
    model = GPTForCausalLM.from_pretrained(run["root"] / "final")
    _accelerate_save_state(model, folder)
    (tmp_path / "run" / "metrics.jsonl").write_text((run["root"] / "metrics.jsonl").read_text())
    state = dict(
        step=60, tokens=60 * 8192, world_size=8, total_batch_tokens=8192, seq_len=256, elapsed_seconds=7200.0,
        hardware=dict(device="NVIDIA H100 80GB HBM3", processes=8, distributed="DistributedType.MULTI_GPU"),
        tokenizer_hash=tokenizer_hash(run["tokenizer"]), model_config=model.config.to_dict(),
        config=dict(model_preset="tiny", data_dir=str(data_dir), learning_rate=6e-4, warmup_steps=10, min_lr_ratio=0.1),
    )
    (folder / "trainer_state.json").write_text(json.dumps(state))
    out = push_to_hub.export(push_to_hub.load_source(folder), tmp_path / "out", "me/tiny-gpt", prompts=[])
    text = ModelCard.load(out / "README.md").text
    assert "| Hardware | 8 x NVIDIA H100 80GB HBM3 (MULTI_GPU) |" in text and "| Training time | 2.00 h |" in text
    assert "| Learning rate | peak 0.0006, linear warmup 10 steps, cosine decay to 6e-05 |" in text
    loaded = GPTForCausalLM.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    (folder / "trainer_state.json").write_text(json.dumps(dict(state, tokenizer_hash="0" * 64)))
    err = refused(capsys, ["--checkpoint", str(folder), "--repo-id", "me/x", "--dry-run"])
    assert "differs from the one the model was trained with (000000000000... in trainer_state.json)" in err


def refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("repo_id, message", [
    ("tiny-gpt", "repo id 'tiny-gpt' must be 'namespace/name'"),
    ("me/tiny/gpt", "repo id 'me/tiny/gpt' must be 'namespace/name'"),
    ("me/", "repo id 'me/' must be 'namespace/name'"),
    ("me/tiny gpt", "repo id 'me/tiny gpt' is not valid on the Hub"),
    ("me/tiny--gpt", "repo id 'me/tiny--gpt' is not valid on the Hub"),
])
def test_refuses_bad_repo_ids(run, capsys, repo_id, message):
    err = refused(capsys, ["--checkpoint", str(run["root"] / "final"), "--repo-id", repo_id, "--dry-run"])
    assert message in err


def test_refuses_folder_without_weights(run, tmp_path, capsys):
    shutil.copytree(run["root"] / "final", tmp_path / "final", ignore=shutil.ignore_patterns("*.safetensors"))
    err = refused(capsys, ["--checkpoint", str(tmp_path / "final"), "--repo-id", "me/x", "--dry-run"])
    assert "no model weights in" in err and "model.safetensors" in err and "config.json" in err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "trainer_state.json").write_text("{}")
    err = refused(capsys, ["--checkpoint", str(tmp_path / "ckpt"), "--repo-id", "me/x", "--dry-run"])
    assert "no model weights in" in err and "pytorch_model_fsdp_0" in err


def test_refuses_mismatched_tokenizer(run, tmp_path, capsys):
    bpe_tokenizer(TEXTS, 300).save_pretrained(tmp_path / "other")
    err = refused(capsys, ["--checkpoint", str(run["root"] / "final"), "--repo-id", "me/x", "--dry-run",
                           "--tokenizer", str(tmp_path / "other")])
    assert f"the tokenizer has 300 tokens but the model's vocab_size is {len(run['tokenizer'])}" in err


def test_refuses_native_without_a_twin_and_on_logit_mismatch(run, tmp_path, capsys):
    config = GPTConfig.from_preset("tiny", vocab_size=len(run["tokenizer"]), bos_token_id=0, eos_token_id=0, norm="rmsnorm")
    GPTForCausalLM(config).save_pretrained(tmp_path / "final")
    run["tokenizer"].save_pretrained(tmp_path / "final")
    err = refused(capsys, ["--checkpoint", str(tmp_path / "final"), "--repo-id", "me/x", "--dry-run", "--native",
                           "--output-dir", str(tmp_path / "out")])
    assert "no native transformers twin" in err and not (tmp_path / "out").exists()
    native = run["model"].to_hf_native()
    assert push_to_hub.check_native_parity(run["model"], native) < 1e-5
    with torch.no_grad():
        native.transformer.h[1].mlp.c_fc.bias += 1e-2
    with pytest.raises(ValueError, match=r"--native refused: GPT2LMHeadModel's logits differ from the original by"):
        push_to_hub.check_native_parity(run["model"], native)


def test_refuses_upload_without_token_and_existing_output(run, tmp_path, capsys, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login
    err = refused(capsys, ["--checkpoint", str(run["root"] / "final"), "--repo-id", "me/x"])
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    err = refused(capsys, ["--checkpoint", str(run["root"] / "final"), "--repo-id", "me/x", "--dry-run",
                           "--output-dir", str(tmp_path / "out")])
    assert "exists and is not empty; pass --overwrite" in err
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
