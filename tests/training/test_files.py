"""moe/files.py, the scratch conventions checkpoints and datasets share: a dead writer's scratch is
removed, a live writer's and this process's are kept, and a replaced directory is never half there."""

import os
import subprocess
import sys

from moe.files import clean_dead, make_scratch, replace_whole, scratch_name, write_atomic


def test_only_the_scratch_of_dead_writers_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        gone = make_scratch(tmp_path / scratch_name(".ds.tmp", dead.pid))
        (gone / "shard.bin").write_bytes(b"x" * 100)
        working = make_scratch(tmp_path / scratch_name(".ds.tmp", live.pid))
        mine = make_scratch(tmp_path / scratch_name(".ds.tmp"))
        other = make_scratch(tmp_path / scratch_name(".other.tmp", dead.pid))  # not matched by the glob
        not_a_dir = tmp_path / scratch_name(".ds.tmp-file", dead.pid)
        not_a_dir.write_text("a file, not a writer's scratch directory")
        assert clean_dead(tmp_path, ".ds.tmp-*") == [gone]
        assert not gone.exists() and working.is_dir() and mine.is_dir() and other.is_dir() and not_a_dir.exists()
    finally:
        live.kill()
        live.wait()


def test_scratch_names_carry_the_writer(tmp_path):
    assert scratch_name(".tmp-step-0000010") == f".tmp-step-0000010-{os.getpid()}"
    assert scratch_name(".x.tmp", 42) == ".x.tmp-42"
    made = make_scratch(tmp_path / "a" / "b")
    (made / "left.txt").write_text("from an earlier try")
    assert list(make_scratch(made).iterdir()) == []  # emptied for a fresh start


def test_replace_whole_puts_the_new_directory_in_place_and_removes_the_old(tmp_path):
    dest = tmp_path / "ds"
    first = make_scratch(tmp_path / scratch_name(".ds.tmp"))
    (first / "v").write_text("1")
    replace_whole(first, dest)
    assert (dest / "v").read_text() == "1" and not first.exists()
    second = make_scratch(tmp_path / scratch_name(".ds.tmp"))
    (second / "v").write_text("2")
    replace_whole(second, dest)
    assert (dest / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # neither scratch nor the old one is left


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "latest"
    target.write_bytes(b"step-0000010")
    write_atomic(target, b"step-0000020")
    assert target.read_bytes() == b"step-0000020" and [p.name for p in tmp_path.iterdir()] == ["latest"]
