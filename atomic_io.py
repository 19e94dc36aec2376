"""Atomic writes for the whole project: a file or folder is either complete or absent, never half written.

Everything is first written inside a private temporary folder beside the target, `.<name>.XXXXXXXX.tmp` (made by
`tempfile.mkdtemp`: a fresh name no user file or other writer holds), then renamed into place with `os.replace`,
which is atomic within one file system. Only what the writer created is ever removed: a user's `<name>.tmp` or
another writer's temporary folder is never touched. A writer killed outright (SIGKILL, power loss) leaves its
temporary folder; `remove_leftovers` clears those in a folder whose tool holds its lock (gpt-train, gpt-tokenize).

    with atomic_path("out/final") as tmp:        # a folder
        model.save_pretrained(tmp)
    write_json("data/manifest.json", manifest)   # a file
"""

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]
# the private folders this module makes: `.<name>.` + mkdtemp's 8 random characters + `.tmp` (writing) or `.old`
# (a replaced folder on its way out)
_PRIVATE = re.compile(r"\..+\.[a-z0-9_]{8}\.(tmp|old)")


def _private_folder(path: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".{kind}", dir=path.parent))


def remove_leftovers(folder: PathLike) -> list[Path]:
    """Delete the temporary folders that killed writers left in `folder` (only names this module makes); return them.

    For a folder its tool holds locked: no other writer of it is running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.iterdir() if _PRIVATE.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    for path in found:
        shutil.rmtree(path)
    return found


def remove(path: PathLike) -> None:
    """Delete a file or a folder tree; nothing if it is not there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_modes(path: PathLike) -> None:
    """Give a file or folder tree the modes a plain `open`/`mkdir` would (0644 / 0755 under umask 022).

    Temporary files and folders (mkstemp, mkdtemp, transformers' weight writer) are private (0600 / 0700): a
    finished model would be unreadable by the teammates of a shared cluster."""
    mask = _umask()
    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            executable = p.is_dir() or p.stat().st_mode & 0o100
            p.chmod((0o777 if executable else 0o666) & ~mask)


class LinkInTheWay(ValueError):
    """The place to write is a symbolic link: it is neither replaced nor written through."""


def refuse_link(path: PathLike) -> None:
    """LinkInTheWay for a path that is a symbolic link: what a write would replace is the user's link (and the
    folder it points to may be anyone's), so nothing is written there."""
    path = Path(path)
    if path.is_symlink():
        raise LinkInTheWay(f"{path} is a symbolic link (to {os.readlink(path)}): it is not replaced, nor written "
                           "through; move the link away (what it points to is kept) and run the same command again")


def replace(src: PathLike, dst: PathLike) -> Path:
    """Rename `src` to `dst`, replacing what is there, with the usual umask modes (`share_modes`). A folder at
    `dst` is first moved into a private `.old` folder (`os.replace` cannot replace a non-empty folder), deleted
    after; if the rename fails, it is moved back. A symbolic link at `dst` is refused (`refuse_link`)."""
    src, dst = Path(src), Path(dst)
    refuse_link(dst)
    share_modes(src)
    if dst.is_dir():
        aside = _private_folder(dst, "old")
        os.replace(dst, aside / dst.name)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(aside / dst.name, dst)
            raise
        finally:
            shutil.rmtree(aside)
    else:
        os.replace(src, dst)
    return dst


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a path (not yet existing) to write a file or folder at; on success it replaces `path`. The private
    folder around it, and anything else written there (a lock file, say), is removed either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    private = _private_folder(path, "tmp")
    try:
        yield private / path.name
        replace(private / path.name, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def write_bytes(path: PathLike, *chunks: bytes, fsync: bool = False) -> Path:
    """Write the chunks as one file, atomically; `fsync` also forces the bytes to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj, **dumps_kwargs) -> Path:
    """`json.dumps(obj, **dumps_kwargs)` and a final newline, atomically."""
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")
