"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from .assignment import linear_sum_assignment
from .trie import Trie

__all__ = ["Trie", "linear_sum_assignment", "__version__"]
