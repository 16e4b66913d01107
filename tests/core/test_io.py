import pytest

from torchslim.core.io import atomic_dir, atomic_file


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_file(p) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert p.read_text() == "good"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]
    with atomic_file(p) as f:
        f.write("new")
    assert p.read_text() == "new"


def test_atomic_dir_replaces_only_on_success(tmp_path):
    d = tmp_path / "art"
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(d) as tmp:
            (tmp / "a").write_text("2")
            raise KeyboardInterrupt
    assert (d / "a").read_text() == "1"
    with atomic_dir(d) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(x.name for x in d.iterdir()) == ["b"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["art"]


def test_a_kill_between_the_renames_of_atomic_dir_is_undone_by_the_next_write(tmp_path):
    import os

    d = tmp_path / "ck"
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("1")
    os.replace(d, tmp_path / ".ck.old-999")            # killed after setting the old folder aside
    (tmp_path / ".ck.x1.tmp").mkdir()                  # and a temporary folder left behind
    with atomic_dir(tmp_path / "other") as tmp:
        pass
    with atomic_dir(d) as tmp:
        assert (d / "a").read_text() == "1"              # restored before the write
        (tmp / "a").write_text("2")
    assert (d / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "other"]


def test_a_complete_staged_write_is_finished_by_the_next_reader_or_writer(tmp_path):
    from torchslim.core.io import COMPLETE, STAGING, recover_staged, staged_files

    with staged_files(tmp_path, "m.json") as st:
        (st / "data").write_text("old")
        (st / "m.json").write_text("old")
    stage = tmp_path / STAGING                          # a new write, complete, killed before its commit
    stage.mkdir()
    (stage / "data").write_text("new")
    (stage / "m.json").write_text("new")
    (stage / COMPLETE).write_text("")
    recover_staged(tmp_path, "m.json", discard_incomplete=False)
    assert (tmp_path / "data").read_text() == "new" and (tmp_path / "m.json").read_text() == "new"
    stage.mkdir()
    (stage / "data").write_text("partial")             # incomplete: a reader leaves it, a writer discards it
    recover_staged(tmp_path, "m.json", discard_incomplete=False)
    assert stage.exists() and (tmp_path / "data").read_text() == "new"
    with staged_files(tmp_path, "m.json") as st:
        (st / "m.json").write_text("newer")
    assert not stage.exists() and (tmp_path / "data").read_text() == "new"
