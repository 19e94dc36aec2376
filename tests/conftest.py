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
