from __future__ import annotations

import pytest
from torch import nn

from torchslim.artifact.size import artifact_bytes, artifact_size, folder_bytes
from torchslim.core.errors import TorchSlimError
from torchslim.eval.size import measure_size


def test_folder_bytes_and_existing_artifact(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "manifest.json").write_bytes(b"{}" * 12)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.bin").write_bytes(b"y" * 7)
    assert folder_bytes(tmp_path) == 1031
    size = measure_size(nn.Linear(2, 2), artifact_dir=tmp_path, sizer=artifact_size)
    assert size.artifact_bytes == 1031 and str(tmp_path) in size.artifact_note
    with pytest.raises(TorchSlimError, match="does not exist"):
        folder_bytes(tmp_path / "missing")


def test_artifact_bytes_saves_for_real() -> None:
    model = nn.Linear(256, 128)
    n, note = artifact_bytes(model)
    assert n is not None and n > (256 * 128 + 128) * 4   # tensors + header + manifest
    assert "torchslim.artifact.save" in note
