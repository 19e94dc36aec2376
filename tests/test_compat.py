"""The supported transformers range: one minimum in setup.cfg, the same in the remote code, and a clear message for
older releases (checked on a real transformers 4.x when CI provides one)."""

import configparser
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import transformers

import modeling_gpt
from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.configuration_gpt import MIN_TRANSFORMERS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = Path(modeling_gpt.__file__).parent / "configuration_gpt.py"
MESSAGE = (r"this GPT's code needs transformers>=5\.4, found {}: upgrade with `pip install -U transformers`, or use "
           r"the model's native export \(`gpt-push --native`")
OLD_PYTHON_HOWTO = ("needs GPT_TEST_OLD_TRANSFORMERS_PYTHON, the path of a python whose environment has transformers 4.x "
                    "(bash .ci/run sets it); by hand: python3 -m venv /tmp/v4 && /tmp/v4/bin/pip install 'transformers<5', "
                    "then GPT_TEST_OLD_TRANSFORMERS_PYTHON=/tmp/v4/bin/python python -m pytest tests/test_compat.py")


def declared_range() -> str:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    requirement = next(line for line in setup["options"]["install_requires"].split("\n") if line.startswith("transformers"))
    return requirement.removeprefix("transformers")


def test_one_minimum_everywhere():
    assert declared_range() == f">={'.'.join(map(str, MIN_TRANSFORMERS))},<6"
    installed = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    assert MIN_TRANSFORMERS <= installed < (6, 0)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "transformers>=" in ci and "setup.cfg" in ci  # CI reads the oldest release to test from setup.cfg


def test_the_skip_reason_does_what_ci_does():
    ci = (ROOT / ".ci" / "run").read_text()
    assert '-m pip install --quiet "transformers<5"' in ci and "export GPT_TEST_OLD_TRANSFORMERS_PYTHON=" in ci
    assert "pip install 'transformers<5'" in OLD_PYTHON_HOWTO and "bash .ci/run sets it" in OLD_PYTHON_HOWTO


@pytest.mark.parametrize("version", ["4.57.6", "5.3.0", "5.4.0.dev0"])
def test_remote_code_refuses_an_older_release_in_one_sentence(monkeypatch, version):
    release = types.ModuleType("transformers")  # what the file sees of an installed release
    release.__version__, release.PretrainedConfig = version, object
    monkeypatch.setitem(sys.modules, "transformers", release)
    spec = importlib.util.spec_from_file_location("remote_configuration_gpt", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    if version.startswith("5.4"):
        spec.loader.exec_module(module)  # a pre-release of the minimum itself is accepted
        return
    with pytest.raises(ImportError, match=MESSAGE.format(re.escape(version))):
        spec.loader.exec_module(module)


@pytest.mark.skipif(not os.environ.get("GPT_TEST_OLD_TRANSFORMERS_PYTHON"), reason=OLD_PYTHON_HOWTO)
def test_a_real_transformers_4_loads_the_folder_to_the_message(tmp_path):
    torch.manual_seed(0)
    GPTForCausalLM(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path / "model")
    script = ("import sys, transformers; print(transformers.__version__, flush=True); "
              "transformers.AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([os.environ["GPT_TEST_OLD_TRANSFORMERS_PYTHON"], "-c", script, str(tmp_path / "model")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    version = result.stdout.split()[0]
    assert version.startswith("4.")
    assert result.returncode != 0
    assert re.fullmatch("ImportError: " + MESSAGE.format(re.escape(version)) + r".*",
                        result.stderr.strip().splitlines()[-1])
