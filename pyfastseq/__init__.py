"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from .trie import Trie

__all__ = ["Trie", "__version__"]
