import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# the accelerate command of this environment (the one beside its python), else the first on PATH
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
# gpt-train refuses --fp8 on a CPU (no speed to gain), yet torchao's float8 matmuls run there (emulated): this program
# lifts that one check, as a GPU of compute capability >= 8.9 passes it, and runs gpt-train
FLOAT8_LAUNCH = "import train_accelerate; train_accelerate.check_fp8 = lambda device: None; train_accelerate.main()"


def free_port() -> int:
    """A TCP port free on this machine now, for one launch's --main_process_port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ctrl_c_as_on_a_terminal():
    """preexec_fn of a child that a test interrupts: SIGINT raises KeyboardInterrupt in it even where pytest runs with
    SIGINT ignored (a script's `cmd &` starts it so, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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



def project_modules() -> tuple[str, ...]:
    """The project's own top-level packages and modules, as setup.cfg installs them."""
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    names = setup["options"]["packages"] + "," + setup["options"]["py_modules"]
    return tuple(name.strip() for name in names.split(",") if name.strip())


# A process that must prove it runs without the project refuses all of the project's modules, whatever way the
# project was installed (an editable install maps them through an import hook, not through sys.path).
PROJECT_MODULES = project_modules()
NO_PROJECT = f"""
import sys
class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PROJECT_MODULES!r}:
            raise ModuleNotFoundError(f"{{name}} belongs to the project, which this process must not import")
sys.meta_path.insert(0, NoProject())
"""


@pytest.fixture
def run_without_project(tmp_path):
    """Run a Python script in a fresh process that cannot import the project, offline, in an empty folder."""

    def run(script: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
        cwd = tmp_path / "elsewhere"
        cwd.mkdir(exist_ok=True)
        return subprocess.run([sys.executable, "-c", NO_PROJECT + script, *args], cwd=cwd, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    return run


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
    """{relative path: sha256} of every file under a folder (lock files and the trainer's record of verified shards
    aside): what must survive a refusal."""
    import hashlib

    def digest(folder) -> dict:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(Path(folder).rglob("*"))
                if p.is_file() and p.name != ".lock" and "data-verified" not in p.relative_to(folder).parts}

    return digest
@pytest.fixture(scope="session")
def mini_data(tmp_path_factory):
    """Token shards of the offline FineWeb-Edu stand-in's first 20 documents, under a 512-token BPE trained on them:
    the data of a tiny model that trains in milliseconds per step."""
    mini = SHARED / "fineweb-edu-mini"
    if not mini.is_dir():
        pytest.skip(f"the offline FineWeb-Edu stand-in is missing: {mini}")
    import tokenize_fineweb

    folder = tmp_path_factory.mktemp("mini-data")
    tokenize_fineweb.main(["--dataset", str(mini), "--name", "sample-10BT", "--output", str(folder), "--train-tokenizer",
                           "--vocab-size", "512", "--tokenizer-train-docs", "20", "--max-docs", "20",
                           "--shard-size", "40000", "--val-tokens", "4096"])
    return folder


@pytest.fixture(scope="session")
def assert_same_run():
    """check(expected, got, steps): two run folders logged the same steps, losses, learning rates, gradient norms,
    validation losses and samples, and exported bit-identical weights (an exact resume)."""

    def check(expected, got, steps):
        from safetensors.torch import load_file

        from train_accelerate import MetricsLog

        want, have = (MetricsLog(run / "metrics.jsonl").read() for run in (expected, got))
        assert [r["step"] for r in have] == list(range(1, steps + 1))
        for key in ("loss", "lr", "grad_norm", "val_loss", "samples"):
            assert [r.get(key) for r in have] == [r.get(key) for r in want], key
        want, have = (load_file(run / "final" / "model.safetensors") for run in (expected, got))
        assert want.keys() == have.keys()
        for name in want:
            assert torch.equal(want[name], have[name]), name

    return check


class RunsCode:
    """Unpickling this creates a folder: the proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture
def runs_code():
    """RunsCode(marker): an object whose unpickling creates the folder `marker` (a crafted pickle's payload)."""
    return RunsCode
