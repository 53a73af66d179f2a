"""lambdalib: Lambda-ResNets on small data, reproducibly.

Importing the package registers the report's ten models with timm.
"""
__version__ = "0.1.0"

from . import models  # noqa: E402,F401  (registers the models with timm)
from .layers import LambdaLayer  # noqa: E402,F401
from .models import create  # noqa: E402,F401
