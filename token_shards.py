"""Token shards on disk and the data loader that turns them into (B, T) batches.

A shard is one file: a 64-byte header (magic, format version, bytes per token, token count) and
then the token ids as little-endian uint16 (vocabularies up to 65,536) or uint32. Every document
is preceded by the end-of-text (EOT) token, so document boundaries are exactly the EOT positions.
`manifest.json` next to the shards records the tokenizer, the vocabulary, each shard's token and
document counts and sha256; `tokenizer/` holds the tokenizer in Hugging Face format.

Both tokenize_fineweb.py (writer) and train_accelerate.py (reader) use this module.
"""

import hashlib
import json
import os
import struct
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import atomic_io
from modeling_gpt.network import unreadable_json

MAGIC = b"GPTTOKS\x00"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per token, token count; zero-padded to 64 bytes
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")
EOT_TEXT = "<|endoftext|>"


class ShardError(ValueError):
    """A shard or manifest that cannot be used: corrupt, truncated, or made for another tokenizer."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def write_json_atomic(path, obj) -> None:
    """A manifest-style JSON file (indented, sorted keys), atomically."""
    atomic_io.write_json(path, obj, indent=2, sort_keys=True)


def write_shard(path, tokens: np.ndarray) -> str:
    """Write `tokens` (uint16 or uint32) as a shard, atomically; return the file's sha256."""
    path = Path(path)
    tokens = np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<"))
    if tokens.dtype.itemsize not in _DTYPES or tokens.dtype.kind != "u":
        raise ValueError(f"shard tokens must be uint16 or uint32, got {tokens.dtype}")
    header = _HEADER.pack(MAGIC, VERSION, tokens.dtype.itemsize, tokens.size).ljust(HEADER_BYTES, b"\x00")
    sha = hashlib.sha256(header)
    sha.update(memoryview(tokens).cast("B"))
    atomic_io.write_bytes(path, header, memoryview(tokens).cast("B"), fsync=True)  # never half a shard on disk
    return sha.hexdigest()


def read_shard_header(path) -> tuple[np.dtype, int]:
    """(dtype, token count) from a shard's header, checked against the file's size."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard {path} is missing")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"shard {path} is truncated: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, itemsize, n_tokens = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ShardError(f"shard {path} has a bad header: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ShardError(f"shard {path} has format version {version}; this code reads version {VERSION}")
    if itemsize not in _DTYPES:
        raise ShardError(f"shard {path} has a bad header: {itemsize} bytes per token, expected 2 or 4")
    expected = HEADER_BYTES + n_tokens * itemsize
    if path.stat().st_size != expected:
        raise ShardError(f"shard {path} is {path.stat().st_size} bytes, but its header says {n_tokens} tokens ({expected} bytes)")
    return _DTYPES[itemsize], n_tokens


def open_shard(path) -> np.ndarray:
    """The shard's tokens as a read-only memory map."""
    dtype, n_tokens = read_shard_header(path)
    if n_tokens == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def file_sha256(path) -> str:
    sha, buf = hashlib.sha256(), bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


def check_sha256(paths: list, expected: list, where) -> None:
    """ShardError naming the first shard whose sha256 is not the one `where` (the manifest) lists."""
    # hashlib releases the GIL on large reads: shards hash in parallel threads
    with ThreadPoolExecutor(max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(file_sha256, paths))
    for path, digest, want in zip(paths, digests, expected):
        if digest != want:
            raise ShardError(f"shard {path} is corrupt: sha256 {digest} does not match {want} in {where}")


def verify_shards(data_dir, record=None) -> bool:
    """Check every shard of data_dir against the sha256 its manifest lists; True when they were hashed.

    With `record` (a JSON file), the hashing happens once: the record keeps each verified shard's size, modification
    and change times, inode and sha256, and while they all stay the same the shards are not read again. The change
    time (ctime) is set by the kernel on every write and on every change of the modification time, and cannot be set
    back: a shard altered in place with its mtime restored is hashed again. (Not caught: a change made with the system
    clock set back, or by writing to the disk device below the file system.)"""
    where = Path(data_dir) / MANIFEST
    entries = read_manifest(data_dir)["shards"]
    paths = [Path(data_dir) / e["file"] for e in entries]
    stamps = {}
    for path, entry in zip(paths, entries):
        if not path.is_file():
            raise ShardError(f"shard {path} is missing")
        stat = path.stat()
        stamps[entry["file"]] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, entry["sha256"]]
    if record is not None and Path(record).is_file():
        try:
            if json.loads(Path(record).read_text()) == stamps:
                return False
        except json.JSONDecodeError:
            pass  # a torn record (it is written atomically, but a user may edit it): verify again
    check_sha256(paths, [e["sha256"] for e in entries], where)
    if record is not None:
        atomic_io.write_json(record, stamps, indent=1)
    return True


def eot_id(tokenizer):
    """The id that separates documents: `<|endoftext|>` where the vocabulary has it, else the eos token (or None)."""
    vocab = tokenizer.get_vocab()
    return vocab[EOT_TEXT] if EOT_TEXT in vocab else tokenizer.eos_token_id


def read_manifest(data_dir) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {data_dir}: is it a folder written by gpt-tokenize?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path} is not valid JSON ({e}): tokenize again into an empty folder") from None
    missing = [k for k in ("vocab_size", "eot_id", "tokenizer", "shards") if not isinstance(manifest, dict) or k not in manifest]
    if not missing and not isinstance(manifest["tokenizer"], dict):
        missing = ["tokenizer"]
    if not missing and not (isinstance(manifest["shards"], list) and all(
            isinstance(s, dict) and {"file", "split", "tokens"} <= s.keys() for s in manifest["shards"])):
        missing = ["shards"]
    if missing:
        raise ShardError(f"{path} is not a gpt-tokenize manifest (missing or malformed: {', '.join(missing)}): "
                         "tokenize again into an empty folder")
    return manifest


def load_tokenizer(data_dir):
    """The transformers tokenizer saved with the shards (works offline)."""
    from transformers import AutoTokenizer

    folder = Path(data_dir) / TOKENIZER_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"no tokenizer folder {folder}: is {data_dir} a folder written by gpt-tokenize?")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        damaged = unreadable_json(folder)
        if damaged is None:
            raise
        raise ShardError(f"{folder}: {damaged}: tokenize again into an empty folder") from e


def tokenizer_hash(tokenizer) -> str:
    """sha256 of a tokenizer's vocabulary (every token string and its id, added tokens included).

    Accepts a transformers tokenizer or a `tokenizers.Tokenizer`; GPT-2 gives the same hash whether
    it was built from vocab.json/merges.txt, from the Hub or from tiktoken's ranks.
    """
    try:
        vocab = tokenizer.get_vocab(with_added_tokens=True)  # tokenizers.Tokenizer
    except TypeError:
        vocab = tokenizer.get_vocab()  # transformers tokenizers include added tokens already
    sha = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        sha.update(f"{idx}\t{token}\n".encode("utf-8", "surrogatepass"))
    return sha.hexdigest()


class ShardDataLoader:
    """(B, T) batches of inputs and next-token targets from token shards, for rank `rank` of `world_size`.

    The split is one stream per epoch: its shards in a seeded per-epoch order, and inside each shard
    its documents (EOT-delimited spans) in a seeded per-epoch order; the val split is read in order.
    The stream is cut into chunks of B*T+1 tokens that overlap by one (the last target of a chunk is
    the first input of the next). Call number k of rank r reads chunk `position + r` and advances
    `position` by `world_size`, so W processes x A micro-steps read the same tokens for any split of
    W*A, and a state saved at one world size resumes at another.
    """

    def __init__(self, data_dir, split="train", *, batch_size, seq_len, rank=0, world_size=1, seed=1337,
                 shuffle=True, vocab_size=None, eot_id=None, tokenizer_hash=None, verify_checksums=True):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}; expected an integer in [0, {world_size})")
        self.data_dir = Path(data_dir)
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = shuffle and split == "train"  # validation is always read in order

        self.manifest = read_manifest(self.data_dir)
        where = self.data_dir / MANIFEST
        checks = (("vocab_size", vocab_size, self.manifest.get("vocab_size")),
                  ("eot_id", eot_id, self.manifest.get("eot_id")),
                  ("tokenizer_hash", tokenizer_hash, self.manifest.get("tokenizer", {}).get("hash")))
        for name, wanted, found in checks:
            if wanted is not None and wanted != found:
                raise ShardError(f"{where} was written with {name}={found!r}, but the model expects {name}={wanted!r}: "
                                 "tokenize the data with the model's tokenizer")
        self.eot_id = self.manifest["eot_id"]

        entries = [s for s in self.manifest["shards"] if s["split"] == split]
        if not entries:
            raise ShardError(f"{where} lists no {split!r} shards")
        self._paths = [self.data_dir / s["file"] for s in entries]
        self._tokens = [open_shard(p) for p in self._paths]
        for path, tokens, entry in zip(self._paths, self._tokens, entries):
            if tokens.size != entry["tokens"]:
                raise ShardError(f"shard {path} holds {tokens.size} tokens, but {where} says {entry['tokens']}")
        if verify_checksums:
            check_sha256(self._paths, [e["sha256"] for e in entries], where)

        self._sizes = np.array([t.size for t in self._tokens], dtype=np.int64)
        self.tokens_per_epoch = int(self._sizes.sum())
        self._chunk = batch_size * seq_len
        self.chunks_per_epoch = (self.tokens_per_epoch - 1) // self._chunk
        if self.chunks_per_epoch < 1:
            raise ShardError(f"the {split!r} split of {self.data_dir} has {self.tokens_per_epoch} tokens, fewer than one "
                             f"batch of batch_size*seq_len+1 = {self._chunk + 1}")
        self._epoch_cache = None  # (epoch, shard order, start offset of each shard in the stream)
        self._views = OrderedDict()  # (epoch, shard) -> (span starts, span ends, stream offsets)
        self._bounds = OrderedDict()  # shard -> EOT positions
        self.position = 0

    # -- the epoch stream ------------------------------------------------------------------------

    def _shard_order(self, epoch):
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            n = len(self._paths)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            offsets = np.concatenate([[0], np.cumsum(self._sizes[order])])
            self._epoch_cache = (epoch, order, offsets)
        return self._epoch_cache[1], self._epoch_cache[2]

    def _view(self, epoch, shard):
        """The shard's documents as spans [start, end) in this epoch's order, with their offsets in the shuffled shard."""
        key = (epoch, shard)
        if key not in self._views:
            n = int(self._sizes[shard])
            if self.shuffle:
                if shard not in self._bounds:
                    self._bounds[shard] = np.flatnonzero(np.asarray(self._tokens[shard]) == self.eot_id)
                    if len(self._bounds) > 2:
                        self._bounds.popitem(last=False)
                eots = self._bounds[shard]
                # spans start at every EOT; a shard may open mid-document, and that tail is a span too
                starts = eots if eots.size and eots[0] == 0 else np.concatenate([[0], eots])
                ends = np.concatenate([starts[1:], [n]])
                perm = np.random.default_rng([self.seed, epoch, shard]).permutation(starts.size)
                starts, ends = starts[perm], ends[perm]
            else:
                starts, ends = np.array([0]), np.array([n])
            offsets = np.concatenate([[0], np.cumsum(ends - starts)])
            self._views[key] = (starts, ends, offsets)
            if len(self._views) > 2:
                self._views.popitem(last=False)
        return self._views[key]

    def _read(self, epoch, start, length) -> np.ndarray:
        """Tokens [start, start + length) of the epoch's stream."""
        order, shard_offsets = self._shard_order(epoch)
        out = np.empty(length, dtype=np.int64)
        filled = 0
        i = int(np.searchsorted(shard_offsets, start, side="right")) - 1
        pos = start - shard_offsets[i]  # position inside the (shuffled) shard
        while filled < length:
            shard = int(order[i])
            starts, ends, offsets = self._view(epoch, shard)
            j = int(np.searchsorted(offsets, pos, side="right")) - 1
            while filled < length and j < starts.size:
                lo = starts[j] + (pos - offsets[j])
                take = min(ends[j] - lo, length - filled)
                out[filled:filled + take] = self._tokens[shard][lo:lo + take]
                filled += take
                pos += take
                j += 1
            i, pos = i + 1, 0
        return out

    # -- public API ------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return (self.position + self.rank) // self.chunks_per_epoch

    def next_batch(self):
        """(x, y): LongTensors of shape (B, T); y[b, t] is the token after x[b, t]."""
        import torch  # here, not at the top: gpt-tokenize imports this module and needs no torch

        epoch, chunk = divmod(self.position + self.rank, self.chunks_per_epoch)
        buf = torch.from_numpy(self._read(epoch, chunk * self._chunk, self._chunk + 1))
        self.position += self.world_size
        x = buf[:-1].view(self.batch_size, self.seq_len)
        y = buf[1:].view(self.batch_size, self.seq_len)
        return x, y

    def reset(self) -> None:
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position, "split": self.split, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "seed": self.seed, "shuffle": self.shuffle,
                "tokens_per_epoch": self.tokens_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state`'s position, on the same data and seed; another batch_size or seq_len resumes at the same
        token of the epoch's stream when that token starts a chunk of this loader's size."""
        for key in ("split", "seed", "shuffle", "tokens_per_epoch"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader has {key}={getattr(self, key)!r}; "
                                 "a state resumes only on the same data in the same order")
        epoch, chunk = divmod(int(state["position"]), (self.tokens_per_epoch - 1) // (state["batch_size"] * state["seq_len"]))
        offset = chunk * state["batch_size"] * state["seq_len"]  # tokens into the epoch's stream
        if offset % self._chunk:
            raise ValueError(f"loader state stopped {offset} tokens into epoch {epoch}, which is not a multiple of "
                             f"batch_size * seq_len = {self.batch_size} * {self.seq_len}: resume with batch_size="
                             f"{state['batch_size']} and seq_len={state['seq_len']}")
        self.position = epoch * self.chunks_per_epoch + offset // self._chunk
