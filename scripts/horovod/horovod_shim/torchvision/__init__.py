"""The slice of torchvision that Horovod's examples/pytorch/pytorch_mnist.py uses, serving
Fashion-MNIST from its IDX files (scripts/experiments/fashion_mnist.py) in place of MNIST's download.

Only for scripts/horovod/horovod_mnist.sh: PyPI's torchvision needs torch builds other than the pinned
CPU wheel, and the example would download MNIST. ``datasets.MNIST(root, train, download,
transform)`` reads the Fashion-MNIST files in ``root`` (the example's --data-dir);
``transforms.ToTensor`` scales to [0, 1] as torchvision's does, ``Normalize`` and ``Compose``
as torchvision's.
"""

from . import datasets, transforms

__all__ = ["datasets", "transforms"]
