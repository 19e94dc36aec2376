"""`.ci/run` leaves nothing behind: its temporary folder of virtual environments (about 5 GB) is removed when it
exits, passed or failed. Run here with `python3` and `python` replaced by stubs that make a venv folder in an
instant and answer every install and test with the exit code asked for, so the script's own logic runs in seconds."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = """#!/usr/bin/env bash
echo "$*" >> "$CI_STUB_LOG"
if [ "${1:-}" = -m ] && [ "${2:-}" = venv ]; then  # python3 -m venv DIR
  mkdir -p "$3/bin" && touch "$3/bin/activate" && ln -s "$0" "$3/bin/python"
  head -c 100000 /dev/zero > "$3/payload"  # something to remove, as a real venv holds
  exit 0
fi
if [ "${1:-}" = -m ] && [ "${2:-}" = pytest ]; then exit "$CI_STUB_PYTEST_RC"; fi
exit 0
"""


def run_ci(tmp_path: Path, pytest_rc: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    stubs, tmp = tmp_path / "bin", tmp_path / "tmp"
    stubs.mkdir()
    tmp.mkdir()
    for name in ("python3", "python"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp),
           "CI_STUB_LOG": str(log), "CI_STUB_PYTEST_RC": str(pytest_rc)}
    env.pop("GPT_TEST_OLD_TRANSFORMERS_PYTHON", None)
    result = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    return result, log.read_text().splitlines()


# passed: all four venvs (oldest, newest, v4, pinned) and three test runs; failed: the first test run ends it
@pytest.mark.parametrize("pytest_rc, venvs, test_runs", [(0, 4, 3), (1, 1, 1)], ids=["passed", "failed"])
def test_ci_removes_its_temporary_folder_on_exit(tmp_path, pytest_rc, venvs, test_runs):
    result, calls = run_ci(tmp_path, pytest_rc)
    assert result.returncode == pytest_rc, result.stdout + result.stderr
    made = [c.split()[2] for c in calls if c.startswith("-m venv ")]
    assert len(made) == venvs and all(m.startswith(str(tmp_path / "tmp")) for m in made), calls
    assert sum(c.startswith("-m pytest") for c in calls) == test_runs
    assert list((tmp_path / "tmp").iterdir()) == [], "the temporary folder of .ci/run was left behind"
