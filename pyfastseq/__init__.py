"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from .lookahead import LCSLookahead, lcs_length, lcs_lengths
from .trie import Trie

__all__ = ["LCSLookahead", "Trie", "__version__", "lcs_length", "lcs_lengths"]
