"""Atomic writes for the whole project: a file or folder is either complete or absent, never half written.

Everything is first written to a temporary sibling (`<name>.tmp` unless the caller names another) and then
renamed into place with `os.replace`, which is atomic within one file system. A writer killed half-way
leaves only the temporary sibling, which the next writer removes.

    with atomic_path("out/final") as tmp:        # a folder
        model.save_pretrained(tmp)
    write_json("data/manifest.json", manifest)   # a file
"""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def temp_path(path: PathLike) -> Path:
    """The default temporary sibling of `path`: `<name>.tmp` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


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


def replace(src: PathLike, dst: PathLike) -> Path:
    """Rename `src` to `dst`, replacing what is there, with the usual umask modes (`share_modes`). A folder at
    `dst` is first renamed aside (`os.replace` cannot replace a non-empty folder) and deleted after; a crash in
    between leaves `.<name>.old` beside it."""
    src, dst = Path(src), Path(dst)
    share_modes(src)
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old")
        remove(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
    return dst


@contextmanager
def atomic_path(path: PathLike, tmp: Optional[PathLike] = None) -> Iterator[Path]:
    """Yield a temporary path to write a file or folder at; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = temp_path(path) if tmp is None else Path(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove(tmp)  # what a killed writer left
    try:
        yield tmp
        replace(tmp, path)
    finally:
        remove(tmp)


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
