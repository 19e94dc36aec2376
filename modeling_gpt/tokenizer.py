"""The GPT-2 tokenizer as a transformers tokenizer, online or offline."""

import copy
import json
import os
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, GPT2TokenizerFast

from .network import OfflineError, hub_unavailable, load_local_or_hub, tiktoken_unavailable

HUB_ID = "openai-community/gpt2"
OFFLINE_FIX = ("set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's gpt2 files (e.g. ../shared/data/tiktoken-cache), "
               "or pass a tokenizer folder with vocab.json and merges.txt (e.g. ../shared/data/gpt2-tokenizer)")
LOAD_OPTIONS = ("is_local", "local_files_only")  # from_pretrained's arguments, not properties of the tokenizer


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
    cache, else tiktoken's `gpt2` encoding (cached, e.g. `TIKTOKEN_CACHE_DIR`, or downloaded), else the Hub.
    Offline (no network, or HF_HUB_OFFLINE=1) with none of these cached: OfflineError in seconds, naming the fix.
    """
    if path is not None:
        folder = Path(path)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file() and not (folder / "tokenizer.json").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
            return _from_vocab_merges(vocab, merges)
        return load_local_or_hub(AutoTokenizer.from_pretrained, str(path), "the tokenizer", OFFLINE_FIX)
    try:
        return AutoTokenizer.from_pretrained(HUB_ID, local_files_only=True)
    except OSError:
        pass
    tiktoken_reason = tiktoken_unavailable()
    if tiktoken_reason is None:
        return gpt2_tokenizer_from_tiktoken()
    hub_reason = hub_unavailable()
    if hub_reason:
        raise OfflineError(f"GPT-2's tokenizer: {tiktoken_reason}; it is not in the Hub cache either and {hub_reason}: {OFFLINE_FIX}")
    return AutoTokenizer.from_pretrained(HUB_ID)


def publishable_tokenizer(tokenizer, n_positions: int):
    """A copy to save next to a model: what GPT-2 users expect from its tokenizer_config.json.

    model_max_length is the model's context (not the "unlimited" 1e30 of a fresh tokenizer); the end-of-text
    token pads, as GPT-2 has no pad token; padding is on the left, which batched generation needs; and the
    loading options that from_pretrained records (is_local, local_files_only) are not written back.
    """
    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = n_positions
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tok.init_kwargs["padding_side"] = "left"
    for key in LOAD_OPTIONS:
        tok.init_kwargs.pop(key, None)
    return tok
