"""torchvision.transforms' Compose, ToTensor and Normalize for 28 x 28 uint8 arrays (see __init__)."""

from __future__ import annotations

import numpy as np
import torch


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    """H x W uint8 -> 1 x H x W float32 in [0, 1]."""

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


class Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
