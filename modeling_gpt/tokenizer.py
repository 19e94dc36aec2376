"""The GPT-2 tokenizer as a transformers tokenizer, online or offline."""

import json
import os
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, GPT2TokenizerFast

HUB_ID = "openai-community/gpt2"


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of vocab.json)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def _from_vocab_merges(vocab: dict, merges: list) -> GPT2TokenizerFast:
    # vocab=/merges= rather than vocab_file=/merges_file=: the latter builds a broken tokenizer in transformers 5.x
    return GPT2TokenizerFast(
        vocab=vocab, merges=merges, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", add_prefix_space=False,
    )


def gpt2_tokenizer_from_tiktoken() -> GPT2TokenizerFast:
    """Rebuild vocab.json / merges.txt from tiktoken's GPT-2 ranks (cached offline via TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    ranks = enc._mergeable_ranks  # token bytes -> id; ids 0..255 are the single bytes
    to_char = _bytes_to_unicode()
    vocab = {"".join(to_char[b] for b in token): rank for token, rank in ranks.items()}
    vocab["<|endoftext|>"] = enc.eot_token
    merges = []
    # each merged token is the BPE of its bytes using only the ranks below its own: exactly two parts remain
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            best, i = min((r, i) for r, i in pairs if r is not None and r < rank)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges.append(tuple("".join(to_char[b] for b in p) for p in parts))
    return _from_vocab_merges(vocab, merges)


def gpt2_tokenizer(path: str | os.PathLike | None = None) -> GPT2TokenizerFast:
    """GPT-2's tokenizer (50257 ids, `<|endoftext|>` = 50256).

    path: a folder holding `vocab.json` + `merges.txt` (e.g. `../shared/data/gpt2-tokenizer`) or a
    saved tokenizer, or a Hub id. With None: the Hub's `openai-community/gpt2` if it is in the local
    cache, else tiktoken's `gpt2` encoding (cached, e.g. `TIKTOKEN_CACHE_DIR`, or downloaded; it
    fails fast offline), else the Hub.
    """
    if path is not None:
        folder = Path(path)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file() and not (folder / "tokenizer.json").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
            return _from_vocab_merges(vocab, merges)
        return AutoTokenizer.from_pretrained(str(path))
    try:
        return AutoTokenizer.from_pretrained(HUB_ID, local_files_only=True)
    except OSError:
        pass
    try:
        return gpt2_tokenizer_from_tiktoken()
    except Exception:  # tiktoken had no cached copy and could not download one
        return AutoTokenizer.from_pretrained(HUB_ID)
