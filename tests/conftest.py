from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved random tiny GPT with GPT-2's tokenizer: a model folder as gpt-eval receives one."""
    from modeling_gpt import GPTConfig, GPTForCausalLM
    from modeling_gpt.tokenizer import gpt2_tokenizer

    if not (SHARED / "gpt2-tokenizer").is_dir():
        pytest.skip(f"the GPT-2 tokenizer files are not at {SHARED / 'gpt2-tokenizer'}")
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    GPTForCausalLM(GPTConfig.from_preset("tiny")).save_pretrained(folder)
    gpt2_tokenizer(SHARED / "gpt2-tokenizer").save_pretrained(folder)
    return folder


@pytest.fixture
def refused(capsys):
    """Call a command's main(argv), which must fail with exit `code`, no traceback and a last stderr line
    `gpt-X: error: ...`; return that line."""

    def call(main, argv, code=2) -> str:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == code, err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("gpt-") and ": error: " in line, err
        return line

    return call


@pytest.fixture
def tree_digest():
    """{relative path: sha256} of every file under a folder (lock files aside): what must survive a refusal."""
    import hashlib

    def digest(folder) -> dict:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != ".lock"}

    return digest
