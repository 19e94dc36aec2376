"""What the four command-line tools share to fail safely.

- `run_cli`: the one error path. An expected failure ends in one line `gpt-X: error: ...` on stderr and a
  non-zero exit (2: bad input, 1: a run that could not finish, 130: Ctrl-C); the traceback is shown only
  with `--debug` or GPT_DEBUG=1. Under `accelerate launch` only the process of rank 0 prints it; the others
  exit quietly (0), so that the launcher neither stops rank 0 before it prints nor lists every process.
- `writing`: a write that fails (a full disk) ends in one line that says what could not be written and how to go on.
- `FolderLock`: an flock on `FOLDER/.lock`, so that two runs never write one output folder; the kernel
  drops it when its holder dies, so a killed run leaves no stale lock. The lock file is never opened through a
  symbolic or hard link.
- `check_pickles`: the one weights-only path for the pickled metadata of torch.distributed.checkpoint
  folders (FSDP sharded checkpoints): anything but the plain metadata classes is refused, never run.
- `check_safetensors`: a truncated weights file named as such; `nonfinite_weights`: the names of parameters
  holding NaN or inf, checked before anything is saved or published.
- `load_model` / `load_state_strictly`: the one strict way every tool loads weights (gpt-push, gpt-eval,
  gpt-train --init_from): safetensors only (pickle weights are refused), no tensor missing, unexpected or of
  another shape.
"""

import difflib
import errno
import json
import os
import pickle
import stat
import sys
import traceback
from contextlib import contextmanager
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


@contextmanager
def writing(what, then: str):
    """A write that fails for lack of space (or any I/O error) ends the command with one line saying how to go on."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as "unexpected pos ..."
        raise RunError(f"could not write {what} ({' '.join(str(err).split())[:200]}); is the disk full? Free space, "
                       f"then {then}") from None


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
        fd = self._open()
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

    def _open(self) -> int:
        """The lock file, never through a link: a symlink, a hard link or anything but a plain file is refused, so
        that the pid written into it can never land in a file outside the folder."""
        refusal = (f"{self.path} is {{}}: a lock file is opened only as a plain file of its folder, never through a "
                   "link; remove it and run the same command again")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                kind = "a symbolic link" if self.path.is_symlink() else "not a plain file"
                raise UserError(refusal.format(kind)) from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise UserError(refusal.format("not a plain file" if not stat.S_ISREG(info.st_mode) else
                                           f"a hard link ({info.st_nlink} names for one file)"))
        return fd

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


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def refuse_pickle_weights(folder, what: str, patterns=PICKLE_WEIGHTS):
    """A model folder whose weights are only pickles (pytorch_model.bin, ...) is refused: pickles are never loaded.
    `patterns` name the weights' files (a training checkpoint holds other pickles: optimizer.bin, scaler.pt)."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in patterns for p in folder.glob(pattern)})
    if pickles:
        raise UserError(f"{what} {folder}: refused {', '.join(pickles)}: pickle weights are never loaded, only "
                        "safetensors ones; use a folder holding model.safetensors")


def _misfit(what: str, missing, unexpected, mismatched) -> str:
    parts = [f"{kind} {', '.join(sorted(names)[:5])}{', ...' if len(names) > 5 else ''}"
             for kind, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if names]
    return (f"{what}: the weights do not fit the model ({'; '.join(parts)}): a missing tensor would be left random and "
            "an unexpected one dropped, so nothing is loaded; use the whole checkpoint the model was saved with")


def load_model(load, name, what: str, **kwargs):
    """`load(name, **kwargs)` (a from_pretrained) strictly: safetensors weights only, each of the model's tensors
    in the checkpoint with its shape, nothing else in it; else a UserError naming the tensors. Tied weights (the
    head that is the embedding) are transformers' to fill, as always."""
    import logging

    if Path(name).is_dir():
        refuse_pickle_weights(name, what)
        check_safetensors(name)
    # modeling_utils' load report would tell, as a table, what the refusal says in one line; with that logger raised,
    # transformers 5.24 checks the model's (empty) tensor-parallel plan and warns that no layer was sharded
    quiet = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        model, info = load(name, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    mismatched = [key for key, *_ in info["mismatched_keys"]]
    if info["missing_keys"] or info["unexpected_keys"] or mismatched:
        raise UserError(_misfit(f"{what} {name}", info["missing_keys"], info["unexpected_keys"], mismatched))
    return model


def load_state_strictly(model, state: dict, what: str):
    """model.load_state_dict(state) for a checkpoint's tensors, refused in one line (naming the tensors) unless they
    are exactly the model's: every one present with its shape, the tied head aside, nothing else."""
    expected = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})  # targets that share their source's tensor
    missing = set(expected) - set(state) - tied
    unexpected = set(state) - set(expected)
    mismatched = {k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)}
    if missing or unexpected or mismatched:
        raise UserError(_misfit(what, missing, unexpected, mismatched))
    model.load_state_dict(state, strict=False)
    return model


def nonfinite_weights(named_tensors) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity (this process's shard of a DTensor)."""
    import torch

    bad = []
    for name, t in named_tensors:
        t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2: no collective per parameter
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad
