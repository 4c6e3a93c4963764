"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from .search import BeamSearch, BeamSearchOutput, TrieBeamSearch
from .trie import Trie

__all__ = ["BeamSearch", "BeamSearchOutput", "Trie", "TrieBeamSearch", "__version__"]
