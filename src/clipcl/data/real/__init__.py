"""Real datasets read from a local data root (nothing is downloaded) and the benchmarks built
from them (MTIL, CIFAR-100 / TinyImageNet / ImageNet-R / DomainNet class-incremental splits)."""

# Each module registers its dataset(s); benchmarks registers the benchmarks built from them.
from clipcl.data.real import (  # noqa: F401
    aircraft,
    benchmarks,
    caltech,
    cars,
    cifar,
    domainnet,
    dtd,
    eurosat,
    flowers,
    food,
    imagenet,
    imagenet_r,
    imagenet_variants,
    mnist,
    pets,
    sun397,
    tinyimagenet,
)
from clipcl.data.real.base import (
    IMAGE_SIZE,
    Check,
    RealDataset,
    Splits,
    dataset_names,
    get_dataset,
    split_80_20,
)

__all__ = [
    "IMAGE_SIZE",
    "Check",
    "RealDataset",
    "Splits",
    "dataset_names",
    "get_dataset",
    "split_80_20",
]
