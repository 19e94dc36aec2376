"""Training curves from runs' metrics.jsonl: loss (train and val) and HellaSwag against tokens seen."""

from pathlib import Path

import atomic_io
from cli_guard import jsonl_lines, nearest_folders

# HellaSwag acc_norm of the published models, build-nanogpt scoring (the lines its plots draw)
REFERENCES = {"GPT-2 124M": 0.2955, "GPT-3 125M": 0.337}


def read_metrics(path) -> tuple[str, list[dict]]:
    """(run name, records) from a run folder holding metrics.jsonl, or from the file itself."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; {nearest_folders(path)}")
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in it; give a run folder holding metrics.jsonl, or such a file")
    records = [record for _, record in jsonl_lines(file)]
    name = file.parent.name if file.name == "metrics.jsonl" else file.stem
    return name, [r for r in records if "tokens" in r]


def _series(records, key):
    points = [(r["tokens"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(runs, output_dir) -> list[Path]:
    """Write loss.png and (when any run logged it) hellaswag.png to output_dir; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    runs = [read_metrics(r) for r in runs]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, records) in enumerate(runs):
        color = colors[i % len(colors)]
        ax.plot(*_series(records, "loss"), color=color, alpha=0.5, linewidth=1, label=f"{name} train")
        x, y = _series(records, "val_loss")
        if x:
            ax.plot(x, y, color=color, marker="o", markersize=3, linewidth=2, label=f"{name} val")
    ax.set(xlabel="tokens seen", ylabel="loss", title="Loss")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, output_dir / "loss.png"))

    if any(_series(records, "hellaswag_acc_norm")[0] for _, records in runs):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (name, records) in enumerate(runs):
            x, y = _series(records, "hellaswag_acc_norm")
            if x:
                ax.plot(x, y, color=colors[i % len(colors)], marker="o", markersize=3, label=name)
        for (label, value), style in zip(REFERENCES.items(), ("--", ":")):
            ax.axhline(value, color="gray", linestyle=style, label=f"{label} ({value}, nanogpt scoring)")
        ax.set(xlabel="tokens seen", ylabel="acc_norm", title="HellaSwag")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, output_dir / "hellaswag.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_io.atomic_path(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
