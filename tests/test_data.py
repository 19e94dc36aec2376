"""The shard format and ShardDataLoader: batches, shuffling, ranks, resume, refusal of bad shards."""

import json

import numpy as np
import pytest
import torch

import token_shards
from token_shards import ShardDataLoader, ShardError

EOT = 0
VOCAB = 60_000
HASH = "f" * 64


def make_data(root, docs_per_shard=(40, 35, 50), val_docs=30, seed=0):
    """Shards of documents whose token ids are all distinct (so a token names its place), and a manifest.

    Each train shard boundary is moved 5 tokens into a document, so documents cross shards.
    Returns {split: list of documents, each an array that starts with EOT}.
    """
    rng = np.random.default_rng(seed)
    next_id, docs, shards = 1, {}, []
    for split, counts in (("val", [val_docs]), ("train", list(docs_per_shard))):
        docs[split] = []
        for _ in range(sum(counts)):
            length = int(rng.integers(1, 60))
            docs[split].append(np.concatenate([[EOT], np.arange(next_id, next_id + length)]).astype(np.uint16))
            next_id += length
        stream = np.concatenate(docs[split])
        ends = np.cumsum([d.size for d in docs[split]])
        bounds = [0] + [int(ends[k - 1]) + 5 for k in np.cumsum(counts)[:-1]] + [stream.size]
        for i in range(len(counts)):
            name = f"{split}_{i:06d}.bin"
            part = stream[bounds[i]:bounds[i + 1]]
            sha = token_shards.write_shard(root / name, part)
            shards.append({"file": name, "split": split, "tokens": int(part.size), "docs": int((part == EOT).sum()), "sha256": sha})
    manifest = {"format": "gpt-token-shards", "version": 1, "vocab_size": VOCAB, "eot_id": EOT, "dtype": "uint16",
                "tokenizer": {"name": "synthetic", "hash": HASH}, "shards": shards}
    token_shards.write_json_atomic(root / "manifest.json", manifest)
    return docs


def spans(root, split="train"):
    """Each shard cut before every EOT: the units the loader shuffles (a shard may open mid-document)."""
    out = []
    for entry in token_shards.read_manifest(root)["shards"]:
        if entry["split"] == split:
            tokens = np.asarray(token_shards.open_shard(root / entry["file"]), dtype=np.int64)
            cuts = [0] + [i for i in np.flatnonzero(tokens == EOT).tolist() if i > 0] + [tokens.size]
            out += [tokens[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    return out


def stream_of(docs):
    return np.concatenate(docs).astype(np.int64)


def test_shard_roundtrip_uint16_and_uint32(tmp_path):
    assert token_shards.token_dtype(50257) == np.uint16 and token_shards.token_dtype(65536) == np.uint16
    assert token_shards.token_dtype(65537) == np.uint32
    for dtype, top in ((np.uint16, 65535), (np.uint32, 2**32 - 1)):
        tokens = np.array([0, 1, top, 7], dtype=dtype)
        sha = token_shards.write_shard(tmp_path / "s.bin", tokens)
        assert sha == token_shards.file_sha256(tmp_path / "s.bin")
        back = token_shards.open_shard(tmp_path / "s.bin")
        assert back.dtype == dtype and back.tolist() == tokens.tolist()
    assert not list(tmp_path.glob("*.tmp"))


def test_val_is_read_in_order_with_shifted_targets(tmp_path):
    docs = make_data(tmp_path)
    stream = stream_of(docs["val"])
    loader = ShardDataLoader(tmp_path, split="val", batch_size=2, seq_len=16, shuffle=True)
    for step in range(3):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (2, 16) and x.dtype == y.dtype == torch.long
        start = step * 32
        assert x.flatten().tolist() == stream[start:start + 32].tolist()
        assert y.flatten().tolist() == stream[start + 1:start + 33].tolist()


def test_unshuffled_train_crosses_shards_in_order(tmp_path):
    docs = make_data(tmp_path)
    stream = stream_of(docs["train"])
    loader = ShardDataLoader(tmp_path, batch_size=4, seq_len=32, shuffle=False)
    got = np.concatenate([loader.next_batch()[0].flatten().numpy() for _ in range(loader.chunks_per_epoch)])
    assert got.tolist() == stream[:got.size].tolist()
    assert loader.tokens_per_epoch == stream.size


def epoch_inputs(loader):
    return np.concatenate([loader.next_batch()[0].flatten().numpy() for _ in range(loader.chunks_per_epoch)])


def one_epoch(root, seed):
    """A whole epoch in one batch: x and the last target give the epoch's token stream."""
    n = sum(s["tokens"] for s in token_shards.read_manifest(root)["shards"] if s["split"] == "train")
    loader = ShardDataLoader(root, batch_size=1, seq_len=n - 1, seed=seed)
    assert loader.chunks_per_epoch == 1
    for _ in range(3):
        x, y = loader.next_batch()
        yield np.concatenate([x[0].numpy(), y[0, -1:].numpy()])


def test_shuffle_permutes_documents_per_epoch_deterministically(tmp_path):
    docs = make_data(tmp_path)
    units = spans(tmp_path)
    by_first_id = {int(u[1] if u[0] == EOT else u[0]): u for u in units}
    epochs = list(one_epoch(tmp_path, seed=1337))
    assert [e.tolist() for e in epochs] == [e.tolist() for e in one_epoch(tmp_path, seed=1337)]
    assert epochs[0].tolist() != epochs[1].tolist() and epochs[1].tolist() != epochs[2].tolist()
    assert epochs[0].tolist() != next(one_epoch(tmp_path, seed=7)).tolist()
    assert epochs[0].tolist() != stream_of(docs["train"]).tolist()
    original_order = {int(u[1] if u[0] == EOT else u[0]): i for i, u in enumerate(units)}
    for epoch in epochs:
        # the epoch is every span exactly once, each intact
        pos, order = 0, []
        while pos < epoch.size:
            key = int(epoch[pos + 1] if epoch[pos] == EOT else epoch[pos])
            unit = by_first_id[key]
            assert epoch[pos:pos + unit.size].tolist() == unit.tolist()
            order.append(original_order[key])
            pos += unit.size
        assert sorted(order) == list(range(len(units)))
        # documents are shuffled inside shards too: few spans are still followed by their original successor
        kept = sum(b == a + 1 for a, b in zip(order[:-1], order[1:]))
        assert kept < len(units) // 4


def test_two_ranks_never_overlap_and_cover_the_epoch(tmp_path):
    docs = make_data(tmp_path)
    stream = stream_of(docs["train"])
    ranks = [ShardDataLoader(tmp_path, batch_size=2, seq_len=24, rank=r, world_size=2) for r in range(2)]
    steps = ranks[0].chunks_per_epoch // 2
    seen = [np.concatenate([loader.next_batch()[0].flatten().numpy() for _ in range(steps)]) for loader in ranks]
    real = [set(s[s != EOT].tolist()) for s in seen]  # every non-EOT id occurs once in the data
    assert not real[0] & real[1]
    read = seen[0].size + seen[1].size
    assert read == steps * 2 * 48
    assert len(real[0] | real[1]) + np.count_nonzero(np.concatenate(seen) == EOT) == read
    assert stream.size - read < 2 * 48  # only the tail of the epoch that fills no whole step is left


def test_global_batch_is_independent_of_the_split(tmp_path):
    make_data(tmp_path)
    single = ShardDataLoader(tmp_path, batch_size=3, seq_len=20, world_size=1)
    pair = [ShardDataLoader(tmp_path, batch_size=3, seq_len=20, rank=r, world_size=2) for r in range(2)]
    steps = single.chunks_per_epoch + 3  # go past an epoch boundary
    for _ in range(steps // 2):
        for r in range(2):
            x1, y1 = single.next_batch()
            x2, y2 = pair[r].next_batch()
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_resume_gives_identical_batches_on_any_world_size(tmp_path):
    make_data(tmp_path)
    ref = ShardDataLoader(tmp_path, batch_size=2, seq_len=16, seed=3)
    expected = [ref.next_batch() for _ in range(ref.chunks_per_epoch + 10)]

    first = [ShardDataLoader(tmp_path, batch_size=2, seq_len=16, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # 14 chunks read by two ranks
        for loader in first:
            loader.next_batch()
    state = json.loads(json.dumps(first[0].state_dict()))
    assert state["position"] == 14

    resumed = ShardDataLoader(tmp_path, batch_size=2, seq_len=16, seed=3)
    resumed.load_state_dict(state)
    for x, y in expected[14:]:
        rx, ry = resumed.next_batch()
        assert torch.equal(rx, x) and torch.equal(ry, y)
    resumed.reset()
    assert torch.equal(resumed.next_batch()[0], expected[0][0])

    # another micro-batch size reads on from the same token: 14 chunks of 2x16 are 7 of 4x16
    wider = ShardDataLoader(tmp_path, batch_size=4, seq_len=16, seed=3)
    wider.load_state_dict(state)
    assert torch.equal(wider.next_batch()[0].flatten(), torch.cat([expected[14][0], expected[15][0]]).flatten())
    state["position"] = 13
    with pytest.raises(ValueError, match="416 tokens into epoch 0, which is not a multiple of batch_size \\* seq_len = 4 \\* 16"):
        wider.load_state_dict(state)
    with pytest.raises(ValueError, match="seed=3 but this loader has seed=4"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=16, seed=4).load_state_dict(state)


@pytest.mark.parametrize("key, value", [("vocab_size", 50257), ("eot_id", 50256), ("tokenizer_hash", "0" * 64)])
def test_refuses_a_tokenizer_mismatch(tmp_path, key, value):
    make_data(tmp_path)
    with pytest.raises(ShardError, match=f"manifest.json was written with {key}=.*{value}"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=8, **{key: value})
    ShardDataLoader(tmp_path, batch_size=2, seq_len=8, vocab_size=VOCAB, eot_id=EOT, tokenizer_hash=HASH)


def test_refuses_corrupt_shards(tmp_path):
    make_data(tmp_path)
    shard = tmp_path / "train_000001.bin"
    raw = bytearray(shard.read_bytes())

    raw[100] ^= 1  # one flipped bit in the tokens
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="train_000001.bin is corrupt: sha256"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=8)
    ShardDataLoader(tmp_path, split="val", batch_size=2, seq_len=8)  # the val split does not read that shard
    raw[100] ^= 1

    shard.write_bytes(b"NOTSHARD" + bytes(raw[8:]))
    with pytest.raises(ShardError, match="train_000001.bin has a bad header: magic"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=8)

    shard.write_bytes(bytes(raw[:-2]))
    with pytest.raises(ShardError, match="train_000001.bin is .* bytes, but its header says"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=8)

    shard.unlink()
    with pytest.raises(ShardError, match="train_000001.bin is missing"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=8)


def test_bad_arguments_are_named(tmp_path):
    make_data(tmp_path)
    with pytest.raises(ValueError, match="split='test'"):
        ShardDataLoader(tmp_path, split="test", batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="rank=2; expected an integer in"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seq_len=0"):
        ShardDataLoader(tmp_path, batch_size=2, seq_len=0)
    with pytest.raises(ShardError, match="fewer than one batch"):
        ShardDataLoader(tmp_path, split="val", batch_size=64, seq_len=1024)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ShardDataLoader(tmp_path / "nowhere", batch_size=2, seq_len=8)


def test_verify_shards_hashes_once_and_again_when_a_shard_changes(tmp_path):
    make_data(tmp_path)
    record = tmp_path / "run" / "verified.json"
    assert token_shards.verify_shards(tmp_path, record=record)  # first start: every shard read
    assert not token_shards.verify_shards(tmp_path, record=record)  # restart: sizes and times only
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    shard = tmp_path / manifest["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(raw)  # same size, a new modification time
    with pytest.raises(ShardError, match=f"shard {shard} is corrupt: sha256 .* does not match"):
        token_shards.verify_shards(tmp_path, record=record)
