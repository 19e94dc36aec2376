"""atomic_io: what is at a path is always either the old complete content or the new complete content."""

import json

import pytest

import atomic_io


def test_write_json_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_io.write_json(path, {"b": 1, "a": 2}, indent=2, sort_keys=True)
    atomic_io.write_json(path, {"b": 3, "a": 4}, indent=2, sort_keys=True)
    assert path.read_text() == json.dumps({"a": 4, "b": 3}, indent=2) + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_writer_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_io.write_text(path, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_io.atomic_path(path) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_folder_is_replaced_whole(tmp_path):
    final = tmp_path / "final"
    (final / "old-only").mkdir(parents=True)
    with atomic_io.atomic_path(final) as tmp:
        assert not tmp.exists() and tmp.name == "final" and tmp.parent.parent == tmp_path
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"weights")
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_only_what_the_writer_created_is_removed(tmp_path, tree_digest):
    """A user's OUT.tmp, .OUT.old and .OUT.tmp, and another writer's temporary folder, survive a write that
    succeeds and one that fails."""
    out = tmp_path / "OUT"
    (out / "old").mkdir(parents=True)
    for name in ("OUT.tmp", ".OUT.old", ".OUT.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text(f"the user's {name}")
    with atomic_io.atomic_path(out) as other:  # another writer, still writing
        other.mkdir()
        (other / "half").write_text("of another writer")
        before = tree_digest(tmp_path)
        with atomic_io.atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "new").write_text("new")
        with pytest.raises(RuntimeError, match="killed"):
            with atomic_io.atomic_path(out) as tmp:
                tmp.mkdir()
                raise RuntimeError("killed")
        after = tree_digest(tmp_path)
        assert {k: v for k, v in after.items() if not k.startswith("OUT/")} == \
               {k: v for k, v in before.items() if not k.startswith("OUT/")}
        assert (out / "new").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".OUT.old", ".OUT.tmp", "OUT", "OUT.tmp"]
    assert (out / "half").read_text() == "of another writer"


def test_a_killed_writers_leftovers_are_cleared_only_on_request(tmp_path):
    shard = tmp_path / "train_000001.bin"
    writer = atomic_io.atomic_path(shard)
    tmp = writer.__enter__()  # a writer killed half-way never leaves its `with`
    tmp.write_bytes(b"half a shard")
    (tmp_path / "user.bin.tmp").write_bytes(b"the user's")
    atomic_io.write_bytes(tmp_path / "other.bin", b"whole")
    assert tmp.exists()
    assert atomic_io.remove_leftovers(tmp_path) == [tmp.parent]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.bin", "user.bin.tmp"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    import os

    final = tmp_path / "final"
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"old weights")
    replace = os.replace

    def fail_into_place(src, dst):
        if os.fspath(dst) == os.fspath(final) and os.path.dirname(src).endswith(".tmp"):  # the new folder into place
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_into_place)
    with pytest.raises(OSError, match="No space"):
        with atomic_io.atomic_path(final) as tmp:
            tmp.mkdir()
    assert (final / "model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_write_bytes_with_fsync_joins_the_chunks(tmp_path):
    path = tmp_path / "shard.bin"
    atomic_io.write_bytes(path, b"head", memoryview(b"tokens"), fsync=True)
    assert path.read_bytes() == b"headtokens"


def test_a_symbolic_link_in_the_way_is_neither_replaced_nor_written_through(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (tmp_path / "out").symlink_to(target)
    with pytest.raises(atomic_io.LinkInTheWay, match=r"out is a symbolic link \(to .*target\): it is not replaced"):
        with atomic_io.atomic_path(tmp_path / "out") as tmp:
            tmp.mkdir()
    assert (tmp_path / "out").is_symlink() and (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]  # its temporary folder is gone
