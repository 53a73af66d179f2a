"""lambdalib: Lambda-ResNets on small data, reproducibly.

Importing the package registers the report's ten models with timm.
"""
import warnings
from importlib import metadata

try:
    __version__ = metadata.version("lambdalib")  # one place: pyproject.toml
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# timm imports huggingface_hub, which imports tqdm.auto: in a notebook without ipywidgets that warns
# "IProgress not found" into every executed notebook, though lambdalib draws no widget bars
warnings.filterwarnings("ignore", message="IProgress not found")

from . import models  # noqa: E402,F401  (registers the models with timm)
from .layers import LambdaLayer  # noqa: E402,F401
from .models import create  # noqa: E402,F401
