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
