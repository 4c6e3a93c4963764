"""pyfastseq: fast, exact constrained seq2seq decoding for PyTorch."""

__version__ = "0.1.0"

from ._config import show_config
from ._limits import get_memory_limit, set_memory_limit
from .assignment import linear_sum_assignment
from .attention import unilm_attention, unilm_mask
from .copy_prior import CopyPrior
from .lookahead import LCSLookahead, lcs_length, lcs_lengths
from .sampling import SampleOutput, Sampler
from .search import BeamSearch, BeamSearchOutput, TrieBeamSearch
from .segments import SegmentDecoder, SegmentOutput
from .trie import Trie
from .unilm import UniLM

__all__ = [
    "BeamSearch",
    "BeamSearchOutput",
    "CopyPrior",
    "LCSLookahead",
    "SampleOutput",
    "Sampler",
    "SegmentDecoder",
    "SegmentOutput",
    "Trie",
    "TrieBeamSearch",
    "UniLM",
    "__version__",
    "get_memory_limit",
    "lcs_length",
    "lcs_lengths",
    "linear_sum_assignment",
    "set_memory_limit",
    "show_config",
    "unilm_attention",
    "unilm_mask",
]


def __getattr__(name):
    # `fs.hf` imports transformers, so it is loaded on first use only (and left out of __all__).
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
