"""What the four command-line tools share to fail safely.

- `run_cli`: the one error path. An expected failure ends in one line `gpt-X: error: ...` on stderr and a
  non-zero exit (2: bad input, 1: a run that could not finish, 130: Ctrl-C); the traceback is shown only
  with `--debug` or GPT_DEBUG=1. Under `accelerate launch` only the process of rank 0 prints it; the others
  exit quietly (0), so that the launcher neither stops rank 0 before it prints nor lists every process.
- `FolderLock`: an flock on `FOLDER/.lock`, so that two runs never write one output folder; the kernel
  drops it when its holder dies, so a killed run leaves no stale lock.
- `check_pickles`: the one weights-only path for the pickled metadata of torch.distributed.checkpoint
  folders (FSDP sharded checkpoints): anything but the plain metadata classes is refused, never run.
- `check_safetensors`: a truncated weights file named as such; `nonfinite_weights`: the names of parameters
  holding NaN or inf, checked before anything is saved or published.
"""

import difflib
import errno
import json
import os
import pickle
import sys
import traceback
from pathlib import Path

DEBUG_ENV = "GPT_DEBUG"


class UserError(Exception):
    """Bad input the user can fix (a value, file or folder); the message names it and what is accepted. Exit 2."""


class RunError(Exception):
    """A run that could not finish (non-finite loss, damaged checkpoint, full disk); the message says what to do. Exit 1."""

    exit_code = 1


class Interrupted(RunError):
    """Ctrl-C, with the message saying where the run stopped and how to go on. Exit 130, as for any Ctrl-C."""

    exit_code = 130


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _os_message(err: OSError) -> str:
    text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    if err.errno == errno.ENOSPC:
        return f"{text} (disk full): free some space, then run the same command again"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{text}: choose a folder you can write to"
    return text


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return _os_message(err)
    text = str(err).strip()
    if isinstance(err, KeyError):  # str(KeyError) is only the quoted key
        text = f"missing key {text}"
    return " ".join(text.split()) or type(err).__name__


def run_cli(prog: str, main, argv=None, interrupted: str = "interrupted (Ctrl-C)"):
    """Call main(argv) and turn expected failures into one line and an exit code.

    Expected: UserError and ValueError (exit 2), FileNotFoundError (2), RunError and other OSErrors such as a full
    disk (1), Ctrl-C (130, the line `interrupted`), a collective broken by another process's failure (1). Anything
    else is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    held = len(FolderLock.held)
    try:
        return main(argv)
    except KeyboardInterrupt as err:
        failure, code, text = err, 130, interrupted
    except RunError as err:
        failure, code, text = err, err.exit_code, _message(err)
    except OSError as err:
        failure, code, text = err, (2 if isinstance(err, FileNotFoundError) else 1), _message(err)
    except (UserError, ValueError) as err:
        failure, code, text = err, 2, _message(err)
    except Exception as err:
        if not _peer_failed(err):
            raise
        # another process of the run failed and broke the collective: report that once, from rank 0
        failure, code, text = err, 1, f"another process of this run stopped first; {DEBUG_ENV}=1 shows every traceback"
    finally:
        for lock in FolderLock.held[held:]:  # a lock lives as long as its command, also when run in-process
            lock.release()
    if debug:
        traceback.print_exception(failure)
    if _rank() != 0:
        # rank 0 says why and fails the launch; the others leave quietly, so that the launcher neither stops rank 0
        # before it prints nor lists every process
        sys.exit(0)
    if text is not None:
        print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def _peer_failed(err: BaseException) -> bool:
    """A collective (gloo/NCCL) that broke because a peer process of a multi-process run died."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed

    return isinstance(err, torch.distributed.DistError) or "Connection closed by peer" in str(err)


def jsonl_lines(path):
    """(line number, value) for each non-empty line of a JSONL file; a line that is not JSON is a UserError naming
    the file and the line. Bytes that are not UTF-8 become U+FFFD instead of failing the whole file."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line.decode("utf-8", errors="replace"))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path} line {number} is not valid JSON ({err.msg}): repair or remove that line") from None


def missing_local_folder(name: str) -> bool:
    """True for a name that is meant as a local folder (not a Hub id `namespace/name`) and does not exist: it starts
    with `.`, `/` or `~`, has more than one `/`, or its first part is a local folder (`out/nope` beside `out/`)."""
    path = Path(name).expanduser()
    if path.exists():
        return False
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
            or len(path.parts) > 1 and Path(path.parts[0]).is_dir())


def nearest_folders(name, shown: int = 5) -> str:
    """For a path that does not exist, what its deepest existing parent holds, nearest names first: `out/ holds: tiny`."""
    path = Path(name).expanduser()
    missing, parent = path.name, path.parent
    while not parent.is_dir() and parent != parent.parent:
        missing, parent = parent.name, parent.parent
    folders = [p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")] if parent.is_dir() else []
    where = str(parent).rstrip("/") + "/"
    if not folders:
        return f"{where} holds no folders"
    nearest = difflib.get_close_matches(missing, sorted(folders), n=len(folders), cutoff=0)
    return f"{where} holds: {', '.join(nearest[:shown])}{', ...' if len(nearest) > shown else ''}"


# ---------------------------------------------------------------------------------------------- lock


class FolderLock:
    """An exclusive flock on FOLDER/.lock holding the holder's pid; a second holder is refused with that pid."""

    NAME = ".lock"
    held: list = []  # the locks this process holds, oldest first

    def __init__(self, folder, what: str):
        self.path = Path(folder) / self.NAME
        self.what = what  # the option that names the folder, e.g. "output_dir"
        self._fd = None

    def acquire(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is in use by another run (pid {holder}); wait for it to end or choose another "
                f"{self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self.held.append(self)
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            self.held.remove(self)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------------- pickles

# what torch.distributed.checkpoint writes into a .metadata file: plain records, torch's dtype/size/layout lookups
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        import torch

        allowed = name in _DCP_GLOBALS.get(module, ()) or (
            module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is not checkpoint metadata")
        return super().find_class(module, name)


def check_pickles(folder) -> list[Path]:
    """Check every torch.distributed.checkpoint `.metadata` pickle under folder through a restricted unpickler.

    Returns the files checked; raises UserError naming the refused file. Nothing in a refused file runs.
    """
    checked = []
    for path in sorted(Path(folder).rglob(".metadata")):
        try:
            with open(path, "rb") as f:
                _MetadataUnpickler(f).load()
        except Exception as err:  # any failure of a pickle from outside means: do not load it
            raise UserError(
                f"refused {path}: {err}; a checkpoint's pickled files are loaded only when they hold plain "
                "checkpoint metadata (never code). Publish or resume from a checkpoint you made yourself"
            ) from None
        checked.append(path)
    return checked


def load_weights_only(path, **kwargs):
    """torch.load(weights_only=True), as accelerate's load does (numpy RNG states allowed): a pickle that asks for
    anything else is refused, naming the file, and nothing in it runs. kwargs go to torch.load (e.g. mmap=True)."""
    from accelerate.utils.other import load

    try:
        return load(path, map_location="cpu", **kwargs)
    except pickle.UnpicklingError as err:
        # torch's message is paragraphs of advice around the one that names what was asked for
        paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]
        reason = next((p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))),
                      type(err).__name__)
        raise UserError(f"refused {path}: {reason}; only weights and plain data are loaded from a checkpoint") from None


# ---------------------------------------------------------------------------------------------- weights


def check_safetensors(path):
    """Every .safetensors file at path (a file or a folder) has a whole header: a truncated or damaged one is named,
    instead of surfacing as a loader's confusing error (e.g. a missing pytorch_model.bin)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError as err:
            raise UserError(f"{file} is damaged ({err}): copy it again or use another checkpoint") from None


def nonfinite_weights(named_tensors) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity (this process's shard of a DTensor)."""
    import torch

    bad = []
    for name, t in named_tensors:
        t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2: no collective per parameter
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad
