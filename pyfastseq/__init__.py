"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from .trie import Trie
from .copy_prior import CopyPrior

__all__ = ["Trie", "__version__"]
__all__ += ["CopyPrior"]


def __getattr__(name):
    # `fs.hf` imports transformers, so it is loaded on first use only.
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
