"""Offline: every download the project makes fails in seconds with one line that names the fix, both with
HF_HUB_OFFLINE=1 and with an unreachable endpoint (HF_ENDPOINT on a closed local port, tiktoken's URL likewise).
No test here needs the network."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
MODES = {"offline": {"HF_HUB_OFFLINE": "1"}, "unreachable": {"HF_ENDPOINT": CLOSED}}

LIBRARY = """
import json, sys, time
import modeling_gpt.network as network
network.TIKTOKEN_GPT2_URLS = tuple(u.replace("https://openaipublic.blob.core.windows.net", sys.argv[1]) for u in network.TIKTOKEN_GPT2_URLS)
from modeling_gpt import GPTForCausalLM
from modeling_gpt.tokenizer import gpt2_tokenizer
out = {}
for name, call in (("gpt2_tokenizer", lambda: gpt2_tokenizer()), ("hub_tokenizer", lambda: gpt2_tokenizer("someone/tokenizer")),
                   ("from_gpt2", lambda: GPTForCausalLM.from_gpt2("openai-community/gpt2"))):
    start = time.perf_counter()
    try:
        call()
        out[name] = {"error": None}
    except network.OfflineError as err:
        out[name] = {"error": str(err), "seconds": time.perf_counter() - start}
print(json.dumps(out))
"""


def _env(tmp_path, mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TIKTOKEN", "DATA_GYM")) and k != "TRANSFORMERS_OFFLINE"}
    (tmp_path / "tiktoken").mkdir(exist_ok=True)
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"), **MODES[mode])
    return env


def _run(args, tmp_path, mode, extra_env=None, timeout=120):
    start = time.perf_counter()
    env = {**_env(tmp_path, mode), **(extra_env or {})}
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("mode", sorted(MODES))
def test_library_downloads_fail_fast_with_the_fix(tmp_path, mode):
    result, _ = _run([sys.executable, "-c", LIBRARY, CLOSED], tmp_path, mode)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    reason = "HF_HUB_OFFLINE=1 is set" if mode == "offline" else "127.0.0.1:9 is unreachable"
    for name, got in out.items():
        assert got["error"] is not None and got["seconds"] < 5, (name, got)  # not the clients' 25-56 s of retries
        assert reason in got["error"], got["error"]
    assert "TIKTOKEN_CACHE_DIR" in out["gpt2_tokenizer"]["error"] and "../shared/data/gpt2-tokenizer" in out["gpt2_tokenizer"]["error"]
    assert "'someone/tokenizer' (not in the local cache)" in out["hub_tokenizer"]["error"]
    assert "GPT2LMHeadModel.save_pretrained" in out["from_gpt2"]["error"]


def _one_error_line(result, prog):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines[-1].startswith(f"{prog}: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[-1]


@pytest.mark.slow
def test_cli_downloads_fail_fast_with_the_fix(tmp_path, model_dir):
    bin_dir = Path(sys.executable).parent
    result, _ = _run([bin_dir / "gpt-tokenize", "--output", str(tmp_path / "shards")], tmp_path, "unreachable")
    assert "--dataset HuggingFaceFW/fineweb-edu needs the Hugging Face Hub" in _one_error_line(result, "gpt-tokenize")
    assert "--dataset ../shared/data/fineweb-edu-mini" in result.stderr

    result, _ = _run([bin_dir / "gpt-eval", "--model", str(model_dir), "--limit", "2"], tmp_path, "offline")
    line = _one_error_line(result, "gpt-eval")
    assert "hellaswag: Rowan/hellaswag is not in the datasets cache and HF_HUB_OFFLINE=1 is set" in line and "--data-dir" in line

    result, _ = _run([bin_dir / "gpt-eval", "--model", str(model_dir), "--limit", "2"], tmp_path, "unreachable")
    assert "127.0.0.1:9 is unreachable" in _one_error_line(result, "gpt-eval")

    env_token = {"HF_TOKEN": "hf_placeholder_never_sent"}  # a token, so that the network is what is missing
    result, _ = _run([bin_dir / "gpt-push", "--checkpoint", str(model_dir), "--repo-id", "me/tiny"], tmp_path, "offline", env_token)
    line = _one_error_line(result, "gpt-push")
    assert "uploading to me/tiny needs the Hugging Face Hub, but HF_HUB_OFFLINE=1 is set" in line and "--dry-run" in line
