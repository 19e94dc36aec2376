"""Where a benchmark writes its JSON.

By default under out/bench/ (git-ignored), so running a benchmark never changes a tracked file; the reference
results in bench/results/ that the READMEs quote are replaced only on purpose, with --save. --output names
any other file.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # tracked reference results
DEFAULT_DIR = Path("out") / "bench"  # relative to where the benchmark runs (the repository root)
SAVE_HELP = f"write the tracked reference file in bench/results/ instead of {DEFAULT_DIR}/"


def results_path(name: str, output=None, save: bool = False) -> Path:
    """--output when given, else bench/results/NAME with --save, else out/bench/NAME."""
    if output:
        return Path(output)
    return (RESULTS if save else DEFAULT_DIR) / name
