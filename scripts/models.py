"""Models of the paper's experiments, in their CIFAR-10 / PTB shapes (no torchvision needed).

``build(name)`` returns a freshly initialised torch module; ``input_shape(name)``
the shape of one sample (images: C x H x W; language models: sequence length).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-20/32/56 for 32x32 images (He et al. 2016, section 4.2): 6n+2 layers."""

    def __init__(self, depth: int = 20, num_classes: int = 10, norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = norm(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class VGG16Cifar(nn.Module):
    """VGG-16 with batch norm for 32x32 images (14.7M parameters)."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 10, norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), norm(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class LSTMLanguageModel(nn.Module):
    """2-layer LSTM language model (PTB shape: vocabulary 10,000; hidden 1500 in the paper)."""

    def __init__(self, vocab: int = 10_000, hidden: int = 1500, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.decoder(out)


class MLP(nn.Module):
    """Small multilayer perceptron (8x8 digits: 64 -> 10)."""

    def __init__(self, inputs: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Small CNN for 1x8x8 digit images."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": lambda: ResNetCifar(20),
    "vgg16": VGG16Cifar,
    "lstm": LSTMLanguageModel,
    "lstm-small": lambda: LSTMLanguageModel(vocab=10_000, hidden=200),
    "mlp": MLP,
    "cnn": SmallCNN,
}
INPUT_SHAPES = {"resnet20": (3, 32, 32), "vgg16": (3, 32, 32), "lstm": (35,), "lstm-small": (35,),
                "mlp": (1, 8, 8), "cnn": (1, 8, 8)}


def build(name: str) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name]()


def input_shape(name: str) -> tuple[int, ...]:
    return INPUT_SHAPES[name]


def is_language_model(name: str) -> bool:
    return name.startswith("lstm")
