"""Models of the paper's experiments, in their CIFAR-10 / PTB shapes (no torchvision needed),
and for Fashion-MNIST's 1 x 28 x 28 images.

``build(name, data)`` returns a freshly initialised torch module; ``input_shape(name, data)``
the shape of one sample (images: C x H x W; language models: sequence length).

On Fashion-MNIST (``data="fashion-mnist"``) the paper's CIFAR models take one input channel
(their first convolution has 1 input channel instead of 3, nothing else changes): ResNet-20
runs on 28 x 28 as it is (two stride-2 stages: 28 -> 14 -> 7, then global average pooling);
VGG-16's five 2x2 poolings need 32 x 32, so it pads the (normalized) image with 2 zero
pixels per side, as CIFAR pipelines pad before cropping. ``convnet`` is the two-convolution CNN of TensorFlow's
tutorials (1.26M parameters, 95% of them in fc 3136 x 384: communication-heavy); ``hvd-net``
is the net of Horovod's examples/pytorch/pytorch_mnist.py (21,840 parameters).
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

    def __init__(self, depth: int = 20, num_classes: int = 10, norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
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

    def __init__(self, num_classes: int = 10, norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 in_channels: int = 3, pad: int = 0):
        super().__init__()
        self.pad = pad  # zero pixels added on each side (28 x 28 -> 32 x 32 with 2)
        layers: list[nn.Module] = []
        cin = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), norm(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
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


class ConvNet(nn.Module):
    """conv 5x5 1->32, pool, conv 5x5 32->64, pool, fc 3136x384, fc 384x10 (1,260,554 parameters)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 384)
        self.fc2 = nn.Linear(384, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class HorovodMnistNet(nn.Module):
    """The net of Horovod's examples/pytorch/pytorch_mnist.py (21,840 parameters; returns logits,
    the example returns their log_softmax for nll_loss: the same loss)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(F.dropout(x, training=self.training))


FASHION_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": lambda: ResNetCifar(20, in_channels=1),
    "vgg16": lambda: VGG16Cifar(in_channels=1, pad=2),
    "convnet": ConvNet,
    "hvd-net": HorovodMnistNet,
    "mlp": lambda: MLP(inputs=28 * 28),
}

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


def build(name: str, data: str = "synthetic") -> nn.Module:
    """A fresh ``name`` for ``data`` (fashion-mnist: 1 x 28 x 28 images; else the shapes above)."""
    builders = FASHION_BUILDERS if data == "fashion-mnist" else BUILDERS
    if name not in builders:
        raise ValueError(f"unknown model {name!r} for --data {data}; choose from {', '.join(sorted(builders))}")
    return builders[name]()


def input_shape(name: str, data: str = "synthetic") -> tuple[int, ...]:
    return (1, 28, 28) if data == "fashion-mnist" else INPUT_SHAPES[name]


def is_language_model(name: str) -> bool:
    return name.startswith("lstm")
