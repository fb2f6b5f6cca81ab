"""pyserving: a production model server on TensorFlow Serving's architecture."""

__version__ = "0.1.0"

from pyserving.serving.server_core import ServerCore, ServerOptions

__all__ = ["ServerCore", "ServerOptions", "__version__"]
