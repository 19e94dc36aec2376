"""Save/load, Auto classes, remote code in a process that cannot import the project, pipeline."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import modeling_gpt
from modeling_gpt import GPTConfig, GPTForCausalLM, GPTModel
from modeling_gpt.tokenizer import gpt2_tokenizer, gpt2_tokenizer_from_tiktoken

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_tokenizer = pytest.mark.skipif(
    not (SHARED / "gpt2-tokenizer" / "vocab.json").is_file(),
    reason=f"the GPT-2 tokenizer files are not at {SHARED / 'gpt2-tokenizer'}",
)
CODE_FILES = ("configuration_gpt.py", "modeling_gpt.py", "convert.py", "loss.py")


def tiny(preset="tiny", **overrides):
    torch.manual_seed(0)
    return GPTForCausalLM(GPTConfig.from_preset(preset, **overrides)).eval()


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_save_load_round_trip_is_exact(tmp_path, preset):
    model = tiny(preset, n_layer=2, n_embd=64, n_head=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GPTForCausalLM
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_auto_classes_and_auto_map(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gpt.GPTConfig",
        "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM",
    }
    for name in CODE_FILES:
        assert (tmp_path / name).is_file(), name
    assert type(AutoConfig.from_pretrained(tmp_path)) is GPTConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is GPTModel


def test_code_files_import_only_torch_transformers_and_each_other():
    package = Path(modeling_gpt.__file__).parent
    for name in CODE_FILES:
        tree = ast.parse((package / name).read_text())
        # an optional extra (Liger Kernel) is imported inside a try, which transformers' remote-code check skips
        optional = {id(node) for block in ast.walk(tree) if isinstance(block, ast.Try) for node in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"." if node.level else node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "transformers", ".", "math", "collections", "copy"}, f"{name}: {ast.unparse(node)}"


ISOLATED = """
import json
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
native = model.to_hf_native()
with torch.no_grad():
    native_logits = native(ids).logits
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
text = generator("The meaning of life is", max_new_tokens=8, do_sample=False)[0]["generated_text"]
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "logits": logits.tolist(),
                  "native_max_diff": (native_logits - logits).abs().max().item(), "text": text}))
"""


@needs_tokenizer
def test_remote_code_and_pipeline_in_a_process_without_the_project(tmp_path, run_without_project):
    model = tiny()
    folder = tmp_path / "published"
    model.save_pretrained(folder)
    gpt2_tokenizer(SHARED / "gpt2-tokenizer").save_pretrained(folder)
    copy = tmp_path / "copy" / "model"
    shutil.copytree(folder, copy)  # the folder alone, nothing else of the project
    ids = [[464, 3139, 286, 1204, 318]]
    result = run_without_project(ISOLATED, str(copy), json.dumps(ids))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["class"].startswith("transformers_modules.") and out["class"].endswith("GPTForCausalLM")
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-6)
    assert out["native_max_diff"] < 1e-5
    assert out["text"].startswith("The meaning of life is") and len(out["text"]) > len("The meaning of life is")


@needs_tokenizer
def test_pipeline_matches_generate(tmp_path):
    from transformers import pipeline

    model = tiny()
    tokenizer = gpt2_tokenizer(SHARED / "gpt2-tokenizer")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = pipeline("text-generation", model=str(tmp_path))("Hello world", max_new_tokens=6, do_sample=False)
    ids = tokenizer("Hello world", return_tensors="pt").input_ids
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              pad_token_id=tokenizer.eos_token_id)
    assert text[0]["generated_text"] == tokenizer.decode(expected[0])


@needs_tokenizer
def test_tokenizer_helper_offline_sources_agree(monkeypatch):
    local = gpt2_tokenizer(SHARED / "gpt2-tokenizer")
    assert len(local) == 50257 and local.eos_token_id == 50256
    text = "Hello world! Ünïcödé 🤗 and  spaces\n\n<|endoftext|>"
    assert local(text).input_ids[-1] == 50256
    assert local.decode(local(text).input_ids) == text
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
    rebuilt = gpt2_tokenizer_from_tiktoken()  # what gpt2_tokenizer() falls back to when the Hub is out of reach
    assert rebuilt.get_vocab() == local.get_vocab()
    sample = (SHARED / "tinyshakespeare" / "input.txt").read_text()[:20000] + text
    assert rebuilt(sample).input_ids == local(sample).input_ids
