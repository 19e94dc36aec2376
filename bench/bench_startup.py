"""Trainer start-up over many token shards: hashing every shard at every start (before) against hashing once per
node and then only comparing sizes and modification times (after).

    python bench/bench_startup.py --tokens_per_shard 10000000 --repeats 2 --save   # 100 shards, 2 GB -> bench/results/startup_cpu.json

Each row times `train_accelerate.start_up()` in this process (one rank): settings, data checks, tiny model,
optimizer, loaders. The page cache of every shard is dropped before each start (posix_fadvise DONTNEED), so the
shards are read from disk as on a cluster's first touch. Rows:
  every start hashes   the record of verified shards is deleted before each start (what every rank of every
                       restart did before; 8 ranks per node read it all 8 times)
  first start          hashes every shard once (local main process only) and writes the record
  restart              the record matches: no shard is read
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import atomic_io
import token_shards
from bench_output import SAVE_HELP, results_path
import train_accelerate as ta
from modeling_gpt.tokenizer import gpt2_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def make_shards(folder: Path, n_shards: int, tokens_per_shard: int, tokenizer):
    """n_shards train shards and one val shard of random ids (a document every 1,000 tokens), with a manifest and
    the tokenizer: a data folder as gpt-tokenize writes one."""
    tokenizer.save_pretrained(folder / token_shards.TOKENIZER_DIR)
    rng, eot, shards = np.random.default_rng(0), token_shards.eot_id(tokenizer), []
    for i in range(n_shards + 1):
        split, name = ("val", "val_000000.bin") if i == n_shards else ("train", f"train_{i:06d}.bin")
        tokens = rng.integers(0, len(tokenizer), tokens_per_shard, dtype=token_shards.token_dtype(len(tokenizer)))
        tokens[::1000] = eot
        sha = token_shards.write_shard(folder / name, tokens)
        shards.append({"file": name, "split": split, "tokens": tokens_per_shard, "docs": int((tokens == eot).sum()), "sha256": sha})
    manifest = {"format": "gpt-token-shards", "version": 1, "vocab_size": len(tokenizer), "eot_id": eot,
                "dtype": token_shards.token_dtype(len(tokenizer)).name,
                "tokenizer": {"name": tokenizer.name_or_path, "hash": token_shards.tokenizer_hash(tokenizer)}, "shards": shards,
                "stream": {"complete": True}}
    token_shards.write_json_atomic(folder / token_shards.MANIFEST, manifest)


def drop_page_cache(folder: Path):
    for path in folder.glob("*.bin"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_start(argv: list[str], data: Path) -> float:
    drop_page_cache(data)
    start = time.perf_counter()
    run = ta.start_up(argv)
    seconds = time.perf_counter() - start
    run.accelerator.end_training()
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--tokens_per_shard", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="Starts per row; the best counts.")
    parser.add_argument("--output", default=None, help="JSON path; default out/bench/startup_cpu.json.")
    parser.add_argument("--save", action="store_true", help=SAVE_HELP)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "out"
        make_shards(data, args.shards, args.tokens_per_shard, gpt2_tokenizer(SHARED / "gpt2-tokenizer"))
        train = ["--model_preset", "tiny", "--data_dir", str(data), "--output_dir", str(out), "--micro_batch_size", "4",
                 "--seq_len", "64", "--total_batch_tokens", "256", "--max_steps", "1", "--tracker", "none",
                 "--mixed_precision", "no"]
        record = out / "data-verified"
        rows = {"every start hashes": [], "first start": [], "restart": []}
        for _ in range(args.repeats):
            shutil.rmtree(record, ignore_errors=True)
            rows["every start hashes"].append(timed_start(train, data))
            shutil.rmtree(record, ignore_errors=True)
            rows["first start"].append(timed_start(train, data))
            rows["restart"].append(timed_start(train, data))
        megabytes = sum(p.stat().st_size for p in data.glob("*.bin")) / 1e6

    table = [{"what": k, "seconds": round(min(v), 3), "all_seconds": [round(s, 3) for s in v]} for k, v in rows.items()]
    print(f"trainer start-up over {args.shards} shards ({megabytes:.0f} MB), best of {args.repeats}, one process:")
    for row in table:
        print(f"  {row['what']:<20} {row['seconds']:8.3f} s")
    out = results_path("startup_cpu.json", args.output, args.save)
    atomic_io.write_json(out, {
        "device": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
        "shards": args.shards, "tokens_per_shard": args.tokens_per_shard, "megabytes": round(megabytes, 1),
        "command": "python bench/bench_startup.py " + " ".join(sys.argv[1:] if argv is None else argv), "rows": table,
    }, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
