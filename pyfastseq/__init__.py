"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from ._config import show_config
from .trie import Trie

__all__ = ["Trie", "__version__", "show_config"]
