"""gpt-push's upload path against a local stand-in for the Hub's HTTP API that records every request.

Just enough of the API for create_repo, create_branch and upload_folder: repos/create, branch,
validate-yaml, preupload (every file "regular", so files travel inside the commit) and commit.
"""

import base64
import json
import os
import subprocess
import sysconfig
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from modeling_gpt import GPTConfig, GPTForCausalLM

TOKEN = "hf_localtest_" + "q7Zx2Lp9Vb4Nm8Kd3Rt6"


class FakeHub(BaseHTTPRequestHandler):
    requests: list  # (method, path, authorization, parsed body)
    files: dict  # (revision, path) -> bytes committed
    refuse_commits = False

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ndjson = self.headers.get("Content-Type", "").startswith("application/x-ndjson")
        body = [json.loads(line) for line in raw.splitlines()] if ndjson else json.loads(raw or b"{}")
        self.requests.append((self.command, self.path, self.headers.get("Authorization"), body))
        endpoint = f"http://{self.headers['Host']}"
        parts = self.path.split("?")[0].strip("/").split("/")  # api, models, ns, name, action, revision
        if parts[:2] == ["api", "validate-yaml"]:
            return self._reply(200, {"errors": [], "warnings": []})
        if parts[:3] == ["api", "repos", "create"]:
            return self._reply(200, {"url": f"{endpoint}/{body['organization']}/{body['name']}"})
        if parts[:2] == ["api", "models"] and len(parts) == 6:
            repo, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
            if action == "branch":
                return self._reply(200, {})
            if action == "preupload":
                return self._reply(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]})
            if action == "commit":
                if self.refuse_commits:
                    return self._reply(403, {"error": "You don't have the rights to push to this repo"})
                for op in body:
                    if op["key"] == "file":
                        self.files[(revision, op["value"]["path"])] = base64.b64decode(op["value"]["content"])
                return self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return self._reply(404, {"error": f"the fake Hub does not serve {self.path}"})


@pytest.fixture
def hub():
    handler = type("Hub", (FakeHub,), {"requests": [], "files": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    """A Hugging Face folder like the trainer's final/: a tiny random model and its custom BPE tokenizer."""
    folder = tmp_path_factory.mktemp("run") / "final"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a tiny corpus for a tiny tokenizer"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny", vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0)
    GPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def gpt_push(args, endpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1",
               no_proxy="127.0.0.1", HF_HUB_DISABLE_TELEMETRY="1")
    script = Path(sysconfig.get_path("scripts")) / "gpt-push"  # the installed entry point
    return subprocess.run([str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_upload_sends_exactly_the_exported_folder(hub, final, tmp_path):
    handler, endpoint = hub
    out = tmp_path / "export"
    result = gpt_push(["--checkpoint", str(final), "--repo-id", "me/tiny-gpt", "--private", "--revision", "exp-1",
                       "--commit-message", "First tiny upload", "--output-dir", str(out), "--prompts", "Hello"],
                      endpoint, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [(method, path.split("?")[0]) for method, path, _, _ in handler.requests]
    assert calls == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/models/me/tiny-gpt/branch/exp-1"),
        ("POST", "/api/validate-yaml"),  # huggingface_hub checks the card's metadata before uploading
        ("POST", "/api/models/me/tiny-gpt/preupload/exp-1"),
        ("POST", "/api/models/me/tiny-gpt/commit/exp-1"),
    ]
    create, commit = handler.requests[0][3], handler.requests[-1][3]
    assert (create["organization"], create["name"], create["visibility"]) == ("me", "tiny-gpt", "private")
    assert commit[0] == {"key": "header", "value": {"summary": "First tiny upload", "description": ""}}
    exported = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert exported.pop(".gpt-push-export.json")  # the marker of an export stays here
    assert {"config.json", "model.safetensors", "modeling_gpt.py", "tokenizer.json", "README.md"} <= set(exported)
    assert handler.files == {("exp-1", path): data for path, data in exported.items()}
    # the token is sent to the Hub and nowhere else: not printed, not written
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth, _ in handler.requests)
    assert TOKEN not in result.stdout + result.stderr
    for path in [*out.rglob("*"), *final.parent.rglob("*"), *(tmp_path / "hf-home").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert "uploaded to me/tiny-gpt (branch exp-1) private" in result.stdout


def test_hub_refusal_is_reported_without_the_token(hub, final, tmp_path):
    handler, endpoint = hub
    handler.refuse_commits = True
    result = gpt_push(["--checkpoint", str(final), "--repo-id", "me/tiny-gpt", "--prompts"], endpoint, tmp_path)
    assert result.returncode == 1
    assert "gpt-push: error: the Hub refused: 403" in result.stderr and "You don't have the rights" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert [path.split("?")[0] for _, path, _, _ in handler.requests][-1] == "/api/models/me/tiny-gpt/commit/main"
    assert not any(tmp_path.glob("*/tiny-gpt"))  # without --output-dir the folder lived in a temporary directory
