"""Networks: the CIFAR ResNets (option-A), a tiny digits ResNet and torchvision models.

Example:
    >>> from lightning_prune.models import create_model
    >>> create_model("cifar_resnet20", num_classes=10).linear.in_features
    64
"""

from lightning_prune.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    cifar_resnet,
    digits_resnet,
)
from lightning_prune.models.registry import create_model, list_models
from lightning_prune.models.torchvision_models import (
    torchvision_classification_models,
    torchvision_model,
)
from lightning_prune.models.weights import load_state_dict_file

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "cifar_resnet",
    "create_model",
    "digits_resnet",
    "list_models",
    "load_state_dict_file",
    "torchvision_classification_models",
    "torchvision_model",
]
