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


def test_a_folder_is_replaced_whole_and_a_stale_temp_is_cleared(tmp_path):
    final = tmp_path / "final"
    (final / "old-only").mkdir(parents=True)
    stale = atomic_io.temp_path(final)  # what a writer killed half-way left
    stale.mkdir()
    (stale / "torn").write_text("x")
    with atomic_io.atomic_path(final) as tmp:
        assert not tmp.exists()
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"weights")
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_write_bytes_with_fsync_joins_the_chunks(tmp_path):
    path = tmp_path / "shard.bin"
    atomic_io.write_bytes(path, b"head", memoryview(b"tokens"), fsync=True)
    assert path.read_bytes() == b"headtokens"
