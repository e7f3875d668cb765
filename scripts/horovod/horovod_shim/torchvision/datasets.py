"""torchvision.datasets.MNIST's interface over Fashion-MNIST's IDX files (see __init__)."""

from __future__ import annotations

import fashion_mnist  # scripts/experiments/fashion_mnist.py
import torch


class MNIST(torch.utils.data.Dataset):
    def __init__(self, root: str, train: bool = True, transform=None, target_transform=None, download: bool = False):
        self.images, labels = fashion_mnist.load("train" if train else "test", root)
        self.targets = torch.from_numpy(labels)
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img, target = self.images[i], int(self.targets[i])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
