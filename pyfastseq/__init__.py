"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from .trie import Trie
from .attention import unilm_attention, unilm_mask
from .unilm import UniLM

__all__ = ["Trie", "__version__"]
__all__ += ["unilm_attention", "unilm_mask", "UniLM"]
