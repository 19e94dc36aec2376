"""Stream FineWeb-Edu (or any text dataset) through a tokenizer into token shards.

    gpt-tokenize --output data/fineweb10B                        # HuggingFaceFW/fineweb-edu sample-10BT, GPT-2
    gpt-tokenize --dataset ../shared/data/fineweb-edu-mini --name sample-10BT --output data/mini --shard-size 100000
    gpt-tokenize --data-files a.parquet b.jsonl --output data/mine --train-tokenizer --vocab-size 16384

Every document is preceded by the end-of-text token. The first --val-tokens tokens form the val
split, the rest the train split, in shards of --shard-size tokens (see token_shards.py for the
format). Killed at any moment, the same command continues from the last complete shard and
produces byte-identical shards.
"""

import copy
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import atomic_io
import token_shards
from cli_guard import FolderLock, UserError, jsonl_lines, run_cli
from modeling_gpt.network import tiktoken_unavailable, unreadable_json
from token_shards import EOT_TEXT, MANIFEST, TOKENIZER_DIR, token_dtype, write_json_atomic, write_shard

DOCS_PER_TASK = 64  # documents per unit of work handed to an encoder thread
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}


class TokenizeError(UserError, ValueError):
    """Bad input from the user: the message says what was wrong and what is accepted."""


@dataclass
class TokenizeArguments:
    output: str = field(metadata={"help": "Folder for the shards, manifest.json and tokenizer/."})
    dataset: str = field(default="HuggingFaceFW/fineweb-edu", metadata={"help": "Hub dataset id or a local folder laid out like one."})
    name: str | None = field(default="sample-10BT", metadata={"help": "Dataset configuration name (FineWeb-Edu: sample-10BT, sample-100BT, ...)."})
    split: str = field(default="train", metadata={"help": "Dataset split to read."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .parquet / .jsonl / .txt files to read instead of --dataset (a .txt file is one document)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the document text."})
    tokenizer: str = field(default="gpt2", metadata={"help": "'gpt2' (tiktoken) or the path / Hub id of a Hugging Face tokenizer."})
    train_tokenizer: bool = field(default=False, metadata={"help": "Train a byte-level BPE on the first --tokenizer-train-docs documents and use it."})
    vocab_size: int = field(default=32768, metadata={"help": "Vocabulary size for --train-tokenizer (end-of-text included)."})
    tokenizer_train_docs: int = field(default=100_000, metadata={"help": "Documents to train the tokenizer on (--train-tokenizer)."})
    shard_size: int = field(default=100_000_000, metadata={"help": "Tokens per shard."})
    val_tokens: int | None = field(default=None, metadata={"help": "The first this many tokens form the val split (default: one shard; 0: no val split)."})
    max_tokens: int | None = field(default=None, metadata={"help": "Stop after this many tokens."})
    max_docs: int | None = field(default=None, metadata={"help": "Stop after this many documents."})
    workers: int = field(default=0, metadata={"help": "Encoder threads (0: one per available core)."})
    overwrite: bool = field(default=False, metadata={"help": "Start over when --output holds a run with other settings."})


def _check_args(args: TokenizeArguments) -> None:
    positive = {"shard_size": args.shard_size, "vocab_size": args.vocab_size, "tokenizer_train_docs": args.tokenizer_train_docs,
                "max_tokens": args.max_tokens, "max_docs": args.max_docs}
    for name, value in positive.items():
        if value is not None and value < 1:
            raise TokenizeError(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    if args.val_tokens is not None and args.val_tokens < 0:
        raise TokenizeError(f"--val-tokens {args.val_tokens}: expected 0 or a positive integer")
    if args.workers < 0:
        raise TokenizeError(f"--workers {args.workers}: expected 0 (all cores) or a positive integer")
    if args.train_tokenizer and args.tokenizer != "gpt2":
        raise TokenizeError(f"--train-tokenizer trains a new tokenizer; it cannot be combined with --tokenizer {args.tokenizer}")
    if args.train_tokenizer and args.vocab_size < 257:
        raise TokenizeError(f"--vocab-size {args.vocab_size}: a byte-level BPE needs at least 257 ids (256 bytes + end-of-text)")
    for path in args.data_files or []:
        if Path(path).suffix not in FORMATS:
            raise TokenizeError(f"--data-files {path}: unsupported extension; accepted: {', '.join(FORMATS)}")
        if not Path(path).is_file():
            raise TokenizeError(f"--data-files {path}: no such file")
        if Path(path).stat().st_size == 0:
            raise TokenizeError(f"--data-files {path}: the file is empty")
    if args.data_files and len({FORMATS[Path(p).suffix] for p in args.data_files}) > 1:
        raise TokenizeError(f"--data-files mixes formats ({', '.join(args.data_files)}); give files of one format")


# -- the source ------------------------------------------------------------------------------------

def _jsonl_records(files):
    for path in files:
        for number, record in jsonl_lines(path):
            if not isinstance(record, dict):
                raise TokenizeError(f"{path} line {number} is a JSON {type(record).__name__}, not an object with a text field")
            yield record


def is_hub_dataset(args: TokenizeArguments) -> bool:
    return not args.data_files and not Path(args.dataset).exists()


def dataset_revision(args: TokenizeArguments, out: Path) -> str | None:
    """The Hub dataset's commit to read (None for local data): the one a resumed run recorded, else the newest.

    The manifest records it, so that a model card can say exactly what the model was trained on.
    """
    if not is_hub_dataset(args):
        return None
    from modeling_gpt.network import require_hub

    require_hub(f"--dataset {args.dataset}", "streaming a Hub dataset needs the network; offline, give a local folder "
                "laid out like it (e.g. --dataset ../shared/data/fineweb-edu-mini --name sample-10BT) or --data-files")
    if (out / MANIFEST).is_file():
        recorded = token_shards.read_manifest(out).get("source", {})
        if recorded.get("dataset") == args.dataset and recorded.get("revision"):
            return recorded["revision"]
    from huggingface_hub import HfApi

    return HfApi().dataset_info(args.dataset).sha


def load_source(args: TokenizeArguments, revision: str | None = None):
    """A streaming datasets.IterableDataset holding only the text column."""
    import datasets

    if args.data_files:
        fmt = FORMATS[Path(args.data_files[0]).suffix]
        if fmt == "jsonl":
            ds = datasets.IterableDataset.from_generator(_jsonl_records, gen_kwargs={"files": list(args.data_files)})
        elif fmt == "text":
            ds = datasets.load_dataset("text", data_files=list(args.data_files), split="train", streaming=True,
                                       sample_by="document", encoding_errors="replace")
        else:
            ds = datasets.load_dataset("parquet", data_files=list(args.data_files), split="train", streaming=True)
    else:
        ds = datasets.load_dataset(args.dataset, name=args.name, split=args.split, streaming=True, revision=revision)
    columns = ds.column_names or list(next(iter(ds), {}).keys())
    if args.text_column not in columns:
        raise TokenizeError(f"--text-column {args.text_column!r} is not in the data; columns present: {', '.join(columns) or 'none'}")
    return ds.select_columns([args.text_column])


def _document(text):
    """The text, or None for what is not a document (non-strings, empty strings)."""
    return text if isinstance(text, str) and text else None


def _repair(text: str) -> str:
    """Lone surrogates (which UTF-8 cannot encode) become U+FFFD, as tiktoken itself does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# -- tokenizers ------------------------------------------------------------------------------------

class Encoder:
    """texts -> (tokens with EOT before each document, tokens per text); None texts give 0 tokens."""

    def __init__(self, backend, eot_id: int, dtype):
        self.backend, self.eot_id, self.dtype = backend, eot_id, dtype
        self._tiktoken = not hasattr(backend, "encode_batch_fast")

    def _tiktoken_ids(self, text):
        try:
            return self.backend.encode_to_numpy(text, disallowed_special=())  # the ids of encode_ordinary
        except UnicodeEncodeError:
            return self.backend.encode_to_numpy(_repair(text), disallowed_special=())

    def __call__(self, texts):
        docs = [t for t in texts if t is not None]
        if self._tiktoken:
            ids = [self._tiktoken_ids(t) for t in docs]
        else:
            try:
                encodings = self.backend.encode_batch_fast(docs, add_special_tokens=False)
            except TypeError:  # a text with lone surrogates
                encodings = self.backend.encode_batch_fast([_repair(t) for t in docs], add_special_tokens=False)
            ids = [np.asarray(e.ids, dtype=np.uint32) for e in encodings]
        lens = np.zeros(len(texts), dtype=np.int64)
        lens[[i for i, t in enumerate(texts) if t is not None]] = [a.size + 1 for a in ids]
        out = np.empty(int(lens.sum()), dtype=self.dtype)
        pos = 0
        for a in ids:
            out[pos] = self.eot_id
            out[pos + 1:pos + 1 + a.size] = a
            pos += a.size + 1
        return out, lens


def _hf_backend(hf_tokenizer):
    """A copy of the fast tokenizer's Rust core that reads '<|endoftext|>' in text as plain text, like tiktoken."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = True
    return backend


def _load_hf_tokenizer(name: str):
    folder = Path(name)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file() \
            and not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        from modeling_gpt.tokenizer import gpt2_tokenizer

        return gpt2_tokenizer(folder)  # a bare GPT-2-style vocab.json + merges.txt
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        reason = (folder.is_dir() and unreadable_json(folder)) or e
        raise TokenizeError(f"--tokenizer {name}: cannot load a Hugging Face tokenizer from it ({reason}); "
                            "give 'gpt2', a tokenizer folder or a Hub id") from e
    if not tok.is_fast:
        raise TokenizeError(f"--tokenizer {name}: only fast (Rust) tokenizers are supported")
    return tok


def _eot_id(hf_tokenizer, name) -> int:
    eot = token_shards.eot_id(hf_tokenizer)
    if eot is None:
        raise TokenizeError(f"--tokenizer {name}: it has neither {EOT_TEXT!r} nor an eos token to separate documents")
    return int(eot)


def train_bpe(ds, args: TokenizeArguments):
    """A byte-level BPE (GPT-2's pre-tokenizer) trained on the first documents of the stream."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        n = 0
        for batch in ds.iter(batch_size=DOCS_PER_TASK):
            for text in map(_document, batch[args.text_column]):
                if text is not None and n < args.tokenizer_train_docs:
                    n += 1
                    yield _repair(text)
            if n >= args.tokenizer_train_docs:
                return

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=[EOT_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT_TEXT, eos_token=EOT_TEXT)


def prepare_tokenizer(args, out: Path, ds, resume_hash):
    """Save the tokenizer to out/tokenizer/ (or reuse the one a resumed run saved).

    Returns (manifest entry, vocabulary size, EOT id, Encoder).
    """
    tok_dir = out / TOKENIZER_DIR
    if resume_hash is not None:
        hf = token_shards.load_tokenizer(out)
        if token_shards.tokenizer_hash(hf) != resume_hash:
            raise TokenizeError(f"{tok_dir} does not match the tokenizer hash in {out / MANIFEST}; use --overwrite to start over")
    elif args.train_tokenizer:
        hf = train_bpe(ds, args)
    elif args.tokenizer == "gpt2":
        from modeling_gpt.tokenizer import gpt2_tokenizer

        hf = gpt2_tokenizer()
    else:
        hf = _load_hf_tokenizer(args.tokenizer)
    if resume_hash is None:
        with atomic_io.atomic_path(tok_dir) as tmp:
            hf.save_pretrained(str(tmp))

    name = f"trained-bpe-{args.vocab_size}" if args.train_tokenizer else args.tokenizer
    eot_id, vocab_size = _eot_id(hf, name), len(hf)
    dtype = token_dtype(vocab_size)
    # tiktoken when its files are at hand (the Hub's cached GPT-2 tokenizer may be all there is offline)
    if args.tokenizer == "gpt2" and not args.train_tokenizer and tiktoken_unavailable() is None:
        import tiktoken

        backend, backend_name = tiktoken.get_encoding("gpt2"), "tiktoken"  # same ids as the saved GPT-2 tokenizer, ~5x faster
    else:
        backend, backend_name = _hf_backend(hf), "tokenizers"
    info = {"name": name, "hash": token_shards.tokenizer_hash(hf), "backend": backend_name, "path": TOKENIZER_DIR}
    return info, vocab_size, eot_id, Encoder(backend, eot_id, dtype)


# -- the run ---------------------------------------------------------------------------------------

def _source_and_config(args: TokenizeArguments):
    source = {"dataset": None if args.data_files else args.dataset, "name": None if args.data_files else args.name,
              "split": None if args.data_files else args.split, "data_files": args.data_files, "text_column": args.text_column}
    config = {k: v for k, v in asdict(args).items() if k not in source and k not in ("output", "workers", "overwrite")}
    config["val_tokens"] = args.shard_size if args.val_tokens is None else args.val_tokens
    if not args.train_tokenizer:  # these only matter when training a tokenizer
        config["vocab_size"] = config["tokenizer_train_docs"] = None
    return source, config


def _start_or_resume(args, out: Path, source, config):
    """The manifest to continue from (None: start fresh), after checking it belongs to this command."""
    if not (out / MANIFEST).is_file():
        return None
    manifest = token_shards.read_manifest(out)
    damaged = _damaged_shard(out, manifest)
    manifest["source"] = {"revision": None, **manifest.get("source", {})}  # written before revisions were recorded
    if manifest.get("source") == source and manifest.get("config") == config and "stream" in manifest and not damaged:
        return manifest
    if damaged and not args.overwrite:
        raise TokenizeError(f"{out} cannot be resumed: {damaged}; pass --overwrite to tokenize it again from the start")
    if not args.overwrite:
        diff = sorted(k for k in set(config) | set(source)
                      if {**manifest.get("source", {}), **manifest.get("config", {})}.get(k) != {**source, **config}.get(k))
        raise TokenizeError(f"{out} holds a run with other settings ({', '.join(diff)} differ); "
                            "repeat its command to resume it, pick another --output, or pass --overwrite")
    for shard in [*out.glob("val_*.bin"), *out.glob("train_*.bin")]:
        shard.unlink()
    (out / MANIFEST).unlink()
    return None


def _damaged_shard(out: Path, manifest: dict) -> str | None:
    """What is wrong with the first listed shard that is missing, truncated or of another length, if any."""
    for entry in manifest["shards"]:
        try:
            _, n_tokens = token_shards.read_shard_header(out / entry["file"])
        except token_shards.ShardError as err:
            return str(err)
        if n_tokens != entry["tokens"]:
            return f"shard {out / entry['file']} holds {n_tokens} tokens, but {out / MANIFEST} says {entry['tokens']}"
    return None


def _records(ds, column, resume):
    """(dataset state before the batch, record index of that state, index of the batch's first record, texts)."""
    state, state_record, skip = None, 0, 0
    if resume is not None:
        state, state_record = resume["dataset_state"], resume["state_record"]
        skip = resume["record"] - state_record
        if state is not None:
            ds.load_state_dict(copy.deepcopy(state))
    first = state_record
    for batch in ds.iter(batch_size=DOCS_PER_TASK):
        texts = batch[column]
        if skip:
            drop = min(skip, len(texts))
            texts, skip = texts[drop:], skip - drop
            first += drop
        if texts:
            yield state, state_record, first, texts
        first += len(texts)
        state, state_record = copy.deepcopy(ds.state_dict()), first


def run(args: TokenizeArguments) -> dict:
    """Tokenize the source into args.output; return the final manifest plus timings.

    The folder is locked while the run writes it: a second run into it is refused with the holder's pid."""
    t_start = time.perf_counter()
    _check_args(args)
    out = Path(args.output)
    revision = dataset_revision(args, out)  # before anything is created: offline, nothing is left behind
    with FolderLock(out, "--output"):
        return _run(args, out, revision, t_start)


def _run(args: TokenizeArguments, out: Path, revision, t_start: float) -> dict:
    atomic_io.remove_leftovers(out)  # a killed run's half-written shards, manifest or tokenizer
    source, config = _source_and_config(args)
    source["revision"] = revision
    manifest = _start_or_resume(args, out, source, config)
    if manifest is not None and manifest["stream"]["complete"]:
        print(f"{out} is already complete ({manifest['stream']['tokens']:,} tokens); nothing to do", file=sys.stderr)
        return manifest
    ds = load_source(args, source["revision"])
    tok_info, vocab_size, eot_id, encoder = prepare_tokenizer(args, out, ds, manifest and manifest["tokenizer"]["hash"])
    if manifest is None:
        manifest = {"format": "gpt-token-shards", "version": token_shards.VERSION, "source": source, "config": config,
                    "tokenizer": tok_info, "vocab_size": vocab_size, "eot_id": eot_id, "dtype": encoder.dtype.name,
                    "shards": [], "stream": {"records": 0, "documents": 0, "skipped": 0, "tokens": 0, "complete": False,
                                             "stop_reason": None, "resume": None}}
        write_json_atomic(out / MANIFEST, manifest)
    stream = manifest["stream"]
    resume = stream["resume"]
    val_tokens, max_tokens = config["val_tokens"], args.max_tokens
    n_shards = {split: sum(s["split"] == split for s in manifest["shards"]) for split in ("val", "train")}
    tokens_done = stream["tokens"]  # in complete shards

    def new_buffer():  # the shard being filled; its size follows from the global token position
        size = min(args.shard_size, val_tokens - tokens_done) if tokens_done < val_tokens else args.shard_size
        return np.empty(size, dtype=encoder.dtype)

    def flush(tokens, cut, skipped, records):
        nonlocal tokens_done
        split = "val" if tokens_done < val_tokens else "train"
        name = f"{split}_{n_shards[split]:06d}.bin"
        sha = write_shard(out / name, tokens)
        n_shards[split] += 1
        docs = int(np.count_nonzero(tokens == eot_id))  # every document starts with an EOT
        manifest["shards"].append({"file": name, "split": split, "tokens": int(tokens.size), "docs": docs, "sha256": sha})
        tokens_done += int(tokens.size)
        stream.update(tokens=tokens_done, documents=stream["documents"] + docs, skipped=skipped, records=records, resume=cut)
        write_json_atomic(out / MANIFEST, manifest)  # after the shard: a kill in between only redoes that shard

    buf, fill = new_buffer(), 0
    lead = resume["offset"] if resume else 0  # tokens of the first record already in earlier shards
    skipped_base = stream["skipped"]  # skipped records before the current batch
    docs_seen = stream["documents"] - (1 if lead else 0)  # documents handed to the encoder so far
    records_read = stream["records"]
    stopped = max_tokens is not None and tokens_done >= max_tokens  # killed right after the last shard
    stop_reason = "max_tokens" if stopped else "end_of_data"
    workers = args.workers or len(os.sched_getaffinity(0))
    # a terminal gets a bar; a log file gets only the summary line, not the bar's fragments
    bar = tqdm(total=max_tokens, initial=tokens_done, unit="tok", unit_scale=True, dynamic_ncols=True, desc="tokenize",
               disable=not sys.stderr.isatty())
    t_stream, cpu_stream = time.perf_counter(), time.process_time()
    records = _records(ds, args.text_column, resume)
    pending, exhausted = deque(), False
    with bar, ThreadPoolExecutor(workers) as pool:  # the bar is closed before any error is printed
        while not stopped:
            # keep every encoder thread busy, a couple of batches ahead
            while not exhausted and len(pending) < 2 * workers:
                item = next(records, None)
                if item is None:
                    exhausted = True
                    break
                state, state_record, first, texts = item
                texts = [_document(t) for t in texts]
                if args.max_docs is not None:
                    idx = [i for i, t in enumerate(texts) if t is not None]
                    room = args.max_docs - docs_seen
                    if len(idx) >= room:  # end the stream right after document number --max-docs
                        texts = texts[:idx[room - 1] + 1] if room > 0 else []
                        exhausted, stop_reason = True, "max_docs"
                docs_seen += sum(t is not None for t in texts)
                pending.append((state, state_record, first, texts, pool.submit(encoder, texts)))
            if not pending:
                break
            state, state_record, first, texts, future = pending.popleft()
            tokens, lens = future.result()
            if lead:
                tokens, lens[0] = tokens[lead:], lens[0] - lead
            ends = np.cumsum(lens)  # where each record's tokens end inside `tokens`
            pos = 0
            while True:
                room = buf.size - fill
                if max_tokens is not None:
                    room = min(room, max_tokens - tokens_done - fill)
                take = min(room, tokens.size - pos)
                buf[fill:fill + take] = tokens[pos:pos + take]
                fill, pos = fill + take, pos + take
                bar.update(take)
                at_max = max_tokens is not None and tokens_done + fill == max_tokens
                if fill < buf.size and not at_max:
                    break  # the batch is used up and the shard is not full
                # the shard is full: cut the stream right after token `pos` of this batch
                done = int(np.searchsorted(ends, pos, side="right"))  # records wholly before the cut
                offset = 0 if done == len(texts) else int(pos - (ends[done - 1] if done else -lead))
                cut = {"record": first + done, "offset": offset, "dataset_state": state, "state_record": state_record}
                skipped = skipped_base + sum(t is None for t in texts[:done])
                flush(buf[:fill], cut, skipped, first + done)
                buf, fill = new_buffer(), 0
                if at_max:
                    stopped, stop_reason, records_read = True, "max_tokens", first + done
                    break
            if not stopped:
                skipped_base += sum(t is None for t in texts)
                records_read, lead = first + len(texts), 0
                bar.set_postfix(docs=f"{docs_seen:,}", skipped=skipped_base, refresh=False)
        for *_, f in pending:
            f.cancel()
    stream.update(complete=True, stop_reason=stop_reason)
    if fill:
        flush(buf[:fill], None, skipped_base, records_read)
    else:
        if stop_reason != "max_tokens":
            stream.update(records=records_read, skipped=skipped_base)
        stream["resume"] = None
        write_json_atomic(out / MANIFEST, manifest)
    t_end = time.perf_counter()
    timings = {"setup_s": t_stream - t_start, "stream_s": t_end - t_stream, "total_s": t_end - t_start,
               "stream_cpu_s": time.process_time() - cpu_stream}  # CPU seconds of all threads: stream_cpu_s / stream_s = cores busy
    return {**manifest, "timings": timings}


def main(argv=None) -> None:
    run_cli("gpt-tokenize", _main, argv, interrupted="interrupted (Ctrl-C); run the same command again to continue "
            "from the last complete shard")


def _main(argv) -> None:
    import pyarrow
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TokenizeArguments).parse_args_into_dataclasses(args=argv)
    try:
        result = run(args)
    except pyarrow.ArrowException as err:  # a damaged parquet file: arrow's message does not name it
        raise TokenizeError(f"cannot read {' '.join(args.data_files or [args.dataset])}: {err}") from None
    stream = result["stream"]
    splits = {s: sum(x["tokens"] for x in result["shards"] if x["split"] == s) for s in ("val", "train")}
    print(f"{args.output}: {stream['tokens']:,} tokens ({splits['val']:,} val, {splits['train']:,} train) in "
          f"{len(result['shards'])} shards from {stream['documents']:,} documents; {stream['skipped']:,} skipped; "
          f"stopped: {stream['stop_reason']}", file=sys.stderr)


if __name__ == "__main__":
    main()
