"""The paper's shared trunks as Keras model factories, each ending in the representation h ∈ R^D."""

from keras_bayesagg.models.convnets import ReflectionPadding2D, cifar_mtl_cnn, resnet_encoder
from keras_bayesagg.models.mpnn import AtomMessagePassing, Set2Set, qm9_mpnn

__all__ = ["AtomMessagePassing", "ReflectionPadding2D", "Set2Set", "cifar_mtl_cnn", "qm9_mpnn", "resnet_encoder"]
