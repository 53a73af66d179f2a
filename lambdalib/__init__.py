"""lambdalib: Lambda-ResNets on small data, reproducibly.

Importing the package registers the report's ten models with timm.
"""
import warnings
from importlib import metadata

try:
    __version__ = metadata.version("lambdalib")  # one place: pyproject.toml
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

import logging
import sys


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a notebook's, pytest's capture), not the one at import."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


# Library code reports through the "lambdalib" logger; by default its INFO lines (one per epoch, what was
# written) go to stdout as plain text. Quiet it with logging.getLogger("lambdalib").setLevel(logging.WARNING).
_logger = logging.getLogger("lambdalib")
if not _logger.handlers:
    _handler = _Stdout()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False

# timm imports huggingface_hub, which imports tqdm.auto: in a notebook without ipywidgets that warns
# "IProgress not found" into every executed notebook, though lambdalib draws no widget bars
warnings.filterwarnings("ignore", message="IProgress not found")

from . import models  # noqa: E402,F401  (registers the models with timm)
from .layers import LambdaLayer  # noqa: E402,F401
from .models import create  # noqa: E402,F401
