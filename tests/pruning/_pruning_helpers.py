"""Models and tasks shared by the pruning tests (imported by name: conftest puts this folder on sys.path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.tasks.classification import ClassificationTask
from torchslim.train import TrainHook


def blob_task(dim: int = 16, classes: int = 4, seed: int = 0) -> ClassificationTask:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        return centers[y] + torch.randn(n, dim, generator=g), y

    return ClassificationTask(*split(256), *split(128))


class CatNet(nn.Module):
    """Two branches concatenated on channels, fused by a conv, flattened into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.fuse = nn.Conv2d(20, 16, 3, padding=1)
        self.head = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], dim=1)
        return self.head(torch.flatten(F.relu(self.fuse(y)), 1))


class CatAddNet(CatNet):
    """The concatenation is added to one conv's output: that conv's filters split between both branches."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 20, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.bn_a(self.a(x)), self.bn_b(self.b(x))], dim=1) + self.proj(x)
        return self.head(self.fuse(F.relu(y)).view(x.shape[0], -1))


class DepthwiseNet(nn.Module):
    """conv -> depthwise (multiplier 2) -> pointwise -> pool -> linear, with BN after each conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16)
        self.pw, self.bn3 = nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        x = F.relu(self.bn3(self.pw(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """A channel gate computed from the features multiplies them: gate filters and features are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.out = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        return self.out(y * gate[..., None, None]).amax(dim=(2, 3))


class TokenMixer(nn.Module):
    """Linear features of a sequence, normalized by BatchNorm1d over channels after a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.bn, self.down = nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.up(x).transpose(1, 2)).permute(0, 2, 1)
        return self.down(F.gelu(y)).sum(dim=1)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 3))


IMAGES = {"x": torch.randn(2, 3, 4, 4)}


class Crash(TrainHook):
    """Raises KeyboardInterrupt after optimizer step ``at`` (a crash for the resume tests; -1: never)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer: object, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt("simulated crash")
