"""Path confinement (core.paths), the output-folder lock (core.lock) and export targets (core.targets)."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.lock import out_lock
from torchslim.core.paths import check_entry_name, confined, rebase_folders
from torchslim.core.targets import check_export, folder_export


@pytest.mark.parametrize("rel,match", [("/etc", "relative to the output folder"), ("../x", "stay inside"),
                                       ("a/../../x", "stay inside"), ("a\x00b", "NUL"), ("x" * 300, "at most 200"),
                                       ("", "non-empty"), ("~/x", "relative to the output folder")])
def test_confined_refuses_paths_that_leave_the_folder(tmp_path, rel, match):
    with pytest.raises(ConfigError, match=match):
        confined(tmp_path, rel, "field")


def test_confined_refuses_links_at_and_under_the_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ck").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "ln").symlink_to(tmp_path / "out")
    assert confined(tmp_path / "out", "a/b", "f") == tmp_path / "out" / "a" / "b"
    with pytest.raises(TorchSlimError, match="ck is a symbolic link"):
        confined(tmp_path / "out", "ck/step", "f")
    with pytest.raises(TorchSlimError, match="is a symbolic link"):
        confined(tmp_path / "ln", "a", "f")


@pytest.mark.parametrize("name,match", [("a/b", "not nested"), ("manifest.json", "reserved"), (".x", "reserved"),
                                        (5, "non-empty relative")])
def test_entry_names(name, match):
    with pytest.raises(ConfigError, match=match):
        check_entry_name(name, "save.path", {"manifest.json"})


def test_rebase_folders_places_nested_fields_inside_the_folder(tmp_path):
    from torchslim.distill.config import DistillConfig
    from torchslim.train import TrainConfig

    cfg = DistillConfig(teacher_cache="tc", train=TrainConfig(steps=2, checkpoint_dir="ck/a"))
    got = rebase_folders(cfg, tmp_path, "stage 1")
    assert got.teacher_cache == str(tmp_path / "tc") and got.train.checkpoint_dir == str(tmp_path / "ck" / "a")
    with pytest.raises(ConfigError, match="stage 1: TrainConfig.checkpoint_dir must be relative"):
        rebase_folders(DistillConfig(train=TrainConfig(steps=2, checkpoint_dir="/tmp/x")), tmp_path, "stage 1")


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4242")
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".torchslim-lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TorchSlimError, match=r"being written by another torchslim run \(pid 4242\)"):
            with out_lock(out):
                pass
    finally:
        holder.kill()                   # like kill -9: the kernel drops the lock, the file stays
        holder.wait()
    assert (out / ".torchslim-lock").exists()
    with out_lock(out):
        fd = os.open(out / ".torchslim-lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not (out / ".torchslim-lock").exists()


def test_the_lock_refuses_links_and_removes_a_folder_it_created(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "ln").symlink_to(tmp_path / "real")
    with pytest.raises(TorchSlimError, match="is a symbolic link"):
        with out_lock(tmp_path / "ln"):
            pass
    with pytest.raises(RuntimeError):
        with out_lock(tmp_path / "new"):
            raise RuntimeError("the run failed early")
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(TorchSlimError, match="is a file"):
        with out_lock(tmp_path / "f"):
            pass


def test_export_targets(tmp_path):
    src, other, mine = tmp_path / "src", tmp_path / "other", tmp_path / "mine"
    for d in (src, other):
        d.mkdir()
        (d / "manifest.json").write_text("{}")
    mine.mkdir()
    (mine / "notes.txt").write_text("n")
    (tmp_path / "f.gguf").write_text("x")
    for out, folder, match in ((src, True, "is the source"), (src / "x", True, "is the source"),
                               (other, True, "another torchslim artifact"), (mine, True, "non-empty folder"),
                               (tmp_path / "f.gguf", True, "is a file"), (tmp_path / "f.gguf", False, "exists"),
                               (other / "x.gguf", False, "inside the torchslim artifact"), (mine, False, "is a folder")):
        with pytest.raises(TorchSlimError, match=match):
            check_export(out, src, force=False, folder=folder)
    with pytest.raises(TorchSlimError, match="is the source"):
        check_export(tmp_path, src, force=True, folder=True)          # holds the source: never, --force or not
    with pytest.raises(RuntimeError):
        with folder_export(tmp_path / "new", src, force=False) as tmp:
            (tmp / "half").write_text("half-written")
            raise RuntimeError("the export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gguf", "mine", "other", "src"]     # nothing half-written
    with folder_export(mine, src, force=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gguf", "mine", "other", "src"]
