"""Tokenization throughput: tokenize_fineweb.py end to end against single-process tiktoken.

    python bench/bench_tokenize.py                   # ~50 MB of text, best of 5, writes out/bench/tokenize_cpu.json (--save: bench/results/)

The text is the local FineWeb-Edu stand-in (../shared/data/fineweb-edu-mini) repeated to ~50 MB and
written as one parquet file. Rows:
  baseline      tiktoken `encode_ordinary` over the in-memory texts, one process, one thread
  stream        tokenize_fineweb.run(): read parquet, tokenize, write shards + manifest (the part that
                scales with the data)
  run           the same call including its fixed set-up (opening the dataset, exporting the tokenizer)
  cli           `python -m tokenize_fineweb ...` as a fresh process (adds Python and library imports)
Each configuration runs --repeats times, interleaved with the baseline, and the best time counts:
other work on a shared machine only ever makes a run slower.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never wait on the Hub

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tiktoken  # noqa: E402

import atomic_io  # noqa: E402
from bench_output import SAVE_HELP, results_path  # noqa: E402
from tokenize_fineweb import TokenizeArguments, run  # noqa: E402

def make_corpus(folder: Path, target_mb: float) -> tuple[Path, list[str]]:
    files = sorted((SHARED / "fineweb-edu-mini" / "sample" / "10BT").glob("*.parquet"))
    if not files:
        raise SystemExit(f"the FineWeb-Edu stand-in is not at {SHARED / 'fineweb-edu-mini'}")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    mb = sum(len(t.encode("utf-8")) for t in table.column("text").to_pylist()) / 1e6
    table = pa.concat_tables([table] * max(1, round(target_mb / mb)))
    path = folder / "corpus.parquet"
    pq.write_table(table, path, row_group_size=1000)
    return path, table.column("text").to_pylist()


def baseline(texts) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tokens) of single-process tiktoken."""
    enc = tiktoken.get_encoding("gpt2")
    t, cpu = time.perf_counter(), time.process_time()
    n = sum(len(enc.encode_ordinary(text)) for text in texts)
    return time.perf_counter() - t, time.process_time() - cpu, n + len(texts)  # + one EOT per document, as the shards hold


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="approximate size of the text in MB")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each configuration; the best counts")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="encoder threads to try (0: all cores)")
    parser.add_argument("--shard-size", type=int, default=2_000_000, help="tokens per shard")
    parser.add_argument("--output", default=None, help="JSON path (default out/bench/tokenize_cpu.json)")
    parser.add_argument("--save", action="store_true", help=SAVE_HELP)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus, texts = make_corpus(tmp, args.mb)
        text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        cmd = ["--data-files", str(corpus), "--shard-size", str(args.shard_size), "--val-tokens", str(args.shard_size)]
        base_s, base_cpu, cli_s = [], [], []
        stream_s, run_s, busy = ({w: [] for w in args.workers} for _ in range(3))
        load_before = os.getloadavg()
        tokens = None
        for _ in range(args.repeats):
            seconds, cpu, tokens = baseline(texts)
            base_s.append(seconds)
            base_cpu.append(cpu)
            for w in args.workers:
                out = tmp / f"out{w}"
                shutil.rmtree(out, ignore_errors=True)
                result = run(TokenizeArguments(output=str(out), data_files=[str(corpus)], shard_size=args.shard_size,
                                               val_tokens=args.shard_size, workers=w))
                if result["stream"]["tokens"] != tokens:
                    raise SystemExit(f"tokenize_fineweb wrote {result['stream']['tokens']} tokens, tiktoken counts {tokens}")
                stream_s[w].append(result["timings"]["stream_s"])
                busy[w].append(result["timings"]["stream_cpu_s"] / result["timings"]["stream_s"])
                run_s[w].append(result["timings"]["total_s"])
        out = tmp / "cli"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tokenize_fineweb", *cmd, "--output", str(out)], cwd=REPO, check=True,
                       stderr=subprocess.DEVNULL)
        cli_s.append(time.perf_counter() - t)

    load_after = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    best = min(base_s)
    rows = [("baseline: tiktoken encode_ordinary, 1 process", 1, best, base_cpu[base_s.index(best)] / best)]
    for w in args.workers:
        threads, i = w or cores, stream_s[w].index(min(stream_s[w]))
        rows.append(("tokenize_fineweb stream (read+tokenize+write)", threads, stream_s[w][i], busy[w][i]))
        rows.append(("tokenize_fineweb run() incl. set-up", threads, min(run_s[w]), None))
    rows.append(("gpt-tokenize CLI incl. Python start-up", cores, min(cli_s), None))

    print(f"\n{text_mb:.1f} MB of text, {tokens:,} tokens, {cores} cores, best of {args.repeats}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other work slows every row)\n")
    print(f"{'what':<48} {'threads':>7} {'seconds':>8} {'Mtok/s':>7} {'MB/s':>6} {'cores busy':>10} {'vs baseline':>11}")
    for name, threads, seconds, cpu in rows:
        print(f"{name:<48} {threads:>7} {seconds:>8.2f} {tokens / seconds / 1e6:>7.2f} {text_mb / seconds:>6.1f} "
              f"{'' if cpu is None else f'{cpu:.2f}':>10} {best / seconds:>10.2f}x")

    report = {
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "tiktoken": tiktoken.__version__},
        "text_mb": round(text_mb, 2), "tokens": tokens, "repeats": args.repeats, "shard_size": args.shard_size,
        "baseline_s": base_s, "baseline_cpu_s": base_cpu,
        "load_average_before_after": [load_before[0], load_after[0]],
        "runs": {str(w or cores): {"stream_s": stream_s[w], "run_s": run_s[w], "cores_busy": busy[w]} for w in args.workers},
        "cli_s": cli_s,
        "table": [{"what": name, "threads": threads, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds),
                   "cores_busy": None if cpu is None else round(cpu, 3), "speedup_vs_baseline": round(best / seconds, 3)}
                  for name, threads, seconds, cpu in rows],
    }
    atomic_io.write_json(results_path("tokenize_cpu.json", args.output, args.save), report, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
