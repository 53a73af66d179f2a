"""lambdalib: Lambda-ResNets on small data, reproducibly.

`import lambdalib` registers the report's models with timm the moment timm is imported (so `lambdalib --help`
and `lambdalib report --help` start without torch or timm); `LambdaLayer`, `create` and `models` load on first use.
Library code logs through the handler-less "lambdalib" logger (like timm's); `log_to_stdout()` shows it.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
import warnings
from importlib import metadata

try:
    __version__ = metadata.version("lambdalib")  # one place: pyproject.toml
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# timm imports huggingface_hub, which imports tqdm.auto: in a notebook without ipywidgets that warns
# "IProgress not found" into every executed notebook, though lambdalib draws no widget bars
warnings.filterwarnings("ignore", message="IProgress not found")


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a notebook's, pytest's capture), not the one at import."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns one: ignored
        pass


def log_to_stdout(level: int = logging.INFO) -> None:
    """Show lambdalib's log lines (one per epoch, what was written) as plain text on stdout; idempotent."""
    logger = logging.getLogger(__name__)
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the handler above prints it; a root handler would print it twice


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Import lambdalib.models (which registers the models) right after `import timm` finishes."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # once; find timm's own spec with the other finders
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_then_register(module):
            run(module)
            importlib.import_module(f"{__name__}.models")

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    importlib.import_module(f"{__name__}.models")
elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())


def __getattr__(name: str):
    if name == "models":
        return importlib.import_module(f"{__name__}.models")
    if name == "LambdaLayer":
        return importlib.import_module(f"{__name__}.layers").LambdaLayer
    if name == "create":
        return importlib.import_module(f"{__name__}.models").create
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
