"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from ._config import show_config
from .attention import unilm_attention, unilm_mask
from .trie import Trie
from .unilm import UniLM

__all__ = [
    "Trie",
    "UniLM",
    "__version__",
    "show_config",
    "unilm_attention",
    "unilm_mask",
]
