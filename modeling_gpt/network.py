"""Fail in seconds, with the fix, when a download cannot work (no network, or HF_HUB_OFFLINE=1).

Without this, the Hub and tiktoken clients retry for half a minute and end in a long traceback. Standard library
only: `convert.from_gpt2` uses it, so it travels with the model code.
"""

import hashlib
import json
import os
import socket
import tempfile
from urllib.parse import urlparse

TIKTOKEN_GPT2_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)
PROBE_TIMEOUT = 3.0  # seconds for one TCP connection attempt


class OfflineError(OSError):
    """A download that cannot happen; the message says what was needed and how to do without it."""


def _hub_offline_mode() -> bool:
    # huggingface_hub's rule (constants.HF_HUB_OFFLINE), read now rather than at its import
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _unreachable(url: str) -> str | None:
    """Why `url` (or the proxy in front of it) cannot be reached, or None when a TCP connection opens."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY") or os.environ.get("all_proxy")
    target = urlparse(proxy if proxy and url.startswith("https") else url)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=PROBE_TIMEOUT).close()
    except OSError as err:
        return f"{target.hostname}:{port} is unreachable ({err.strerror or err})"
    return None


def hub_unavailable() -> str | None:
    """Why the Hugging Face Hub cannot be used now (HF_HUB_OFFLINE, or the endpoint unreachable), else None."""
    if _hub_offline_mode():
        return "HF_HUB_OFFLINE=1 is set"
    return _unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def require_hub(what: str, fix: str):
    """Raise OfflineError naming `what` needed the Hub and the `fix` (a local path or cache to use instead)."""
    reason = hub_unavailable()
    if reason:
        raise OfflineError(f"{what} needs the Hugging Face Hub, but {reason}: {fix}")


def _tiktoken_cache_dir() -> str:
    # tiktoken's own rule (tiktoken/load.py)
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def tiktoken_gpt2_cached() -> bool:
    """Whether tiktoken's `gpt2` encoding loads without a download."""
    folder = _tiktoken_cache_dir()
    return bool(folder) and all(
        os.path.isfile(os.path.join(folder, hashlib.sha1(url.encode()).hexdigest())) for url in TIKTOKEN_GPT2_URLS
    )


def tiktoken_unavailable() -> str | None:
    """Why tiktoken's `gpt2` encoding can neither be read from its cache nor downloaded now, else None."""
    if tiktoken_gpt2_cached():
        return None
    reason = "HF_HUB_OFFLINE=1 is set" if _hub_offline_mode() else _unreachable(TIKTOKEN_GPT2_URLS[0])
    return reason and f"it is not in tiktoken's cache ({_tiktoken_cache_dir() or 'off'}) and {reason}"


def unreadable_json(folder) -> str | None:
    """The first JSON file of `folder` that is not UTF-8 JSON, with the reason, or None when all of them read."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.endswith(".json") and entry.is_file():
            try:
                with open(entry.path, encoding="utf-8") as f:
                    json.load(f)
            except UnicodeDecodeError:
                return f"{entry.name} is not UTF-8 text"
            except json.JSONDecodeError as err:
                return f"{entry.name} is not valid JSON ({err})"
    return None


def load_local_or_hub(load, name, what: str, fix: str):
    """`load(name, **kwargs)` (a from_pretrained) from a folder or the local Hub cache; the Hub only when usable.

    Raises OfflineError with `fix` when `name` is neither local nor cached and the Hub cannot be reached.
    """
    if os.path.isdir(name):
        try:
            return load(name)
        except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            damaged = unreadable_json(name)
            if damaged is None:
                raise
            raise ValueError(f"{what} {name}: {damaged}; save the folder again with save_pretrained") from err
    try:
        return load(name, local_files_only=True)
    except OSError:
        pass
    require_hub(f"{what} {name!r} (not in the local cache)", fix)
    return load(name)
