"""Built-in models: Flax linen modules wrapped as pure ``Model`` triples (DESIGN §2).

Every model is stateless (GroupNorm or no norm, never BatchNorm) and names its
classifier ``head``, the split point between feature extractor and head.
"""

from fedpriv.models.base import check_image_shape, check_input_shape, from_linen
from fedpriv.models.convnet import ConvNet, convnet
from fedpriv.models.embedding_bag import EmbeddingBag, embedding_bag
from fedpriv.models.lenet import LeNet, lenet
from fedpriv.models.mlp import MLP, mlp
from fedpriv.models.registry import MODEL_NAMES, make_model, model_options
from fedpriv.models.resnet import BasicBlock, ResNet, resnet
from fedpriv.models.transformer import TransformerClassifier, transformer

__all__ = [
    "MODEL_NAMES",
    "BasicBlock",
    "ConvNet",
    "EmbeddingBag",
    "LeNet",
    "MLP",
    "ResNet",
    "TransformerClassifier",
    "check_image_shape",
    "check_input_shape",
    "convnet",
    "embedding_bag",
    "from_linen",
    "lenet",
    "make_model",
    "mlp",
    "model_options",
    "resnet",
    "transformer",
]
