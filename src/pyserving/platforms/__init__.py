"""Platforms: the Servable base class users write, signatures, and one module per framework."""

from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature, TensorSpec

__all__ = ["Servable", "Signature", "TensorSpec"]
