"""
pyfastseq CPU kernels (torch-free C++ core). Use the pyfastseq package, not this module.
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['BeamSearchState', 'LcsPattern', 'Trie', 'assign', 'assign_matrix', 'beam_step', 'build_info', 'lcs_lookahead', 'sample_step', 'subtree_heights', 'trie_constrain', 'trie_mask', 'trie_walk']
class BeamSearchState:
    """
    A beam search in progress: feed it each step's logits, read back the tokens.
    """
    def __init__(self, batch_size: typing.SupportsInt | typing.SupportsIndex, num_beams: typing.SupportsInt | typing.SupportsIndex, max_length: typing.SupportsInt | typing.SupportsIndex, min_length: typing.SupportsInt | typing.SupportsIndex, num_return_sequences: typing.SupportsInt | typing.SupportsIndex, length_penalty: typing.SupportsFloat | typing.SupportsIndex, early_stopping: typing.SupportsInt | typing.SupportsIndex, eos_id: typing.SupportsInt | typing.SupportsIndex, pad_id: typing.SupportsInt | typing.SupportsIndex, normalize_allowed: bool, record_token_scores: bool, tries: collections.abc.Sequence[Trie], start_nodes: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        """
        tries: [] (unconstrained), [trie] or one per batch item; early_stopping 0/1/2 = False/True/'never'.
        """
    def results(self, count: typing.SupportsInt | typing.SupportsIndex) -> list:
        ...
    def step(self, logits_ptr: typing.SupportsInt | typing.SupportsIndex, vocab: typing.SupportsInt | typing.SupportsIndex, row_stride: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, delta_offsets_ptr: typing.SupportsInt | typing.SupportsIndex, deltas_ptr: typing.SupportsInt | typing.SupportsIndex) -> bool:
        """
        One step from logits [rows, vocab] (dtype 0/1/2 = float32/float16/bfloat16); lookahead pointers or 0. Returns False once every batch item is done.
        """
    @property
    def beam_idx(self) -> numpy.typing.NDArray[numpy.int32]:
        ...
    @property
    def eos_id(self) -> int:
        ...
    @property
    def generated(self) -> numpy.typing.NDArray[numpy.int32]:
        ...
    @property
    def length(self) -> int:
        ...
    @property
    def next_tokens(self) -> numpy.typing.NDArray[numpy.int32]:
        ...
    @property
    def nodes(self) -> numpy.typing.NDArray[numpy.int32]:
        ...
    @property
    def normalize_allowed(self) -> bool:
        ...
class LcsPattern:
    """
    The bit-parallel LCS match table of one int32 query, built once.
    """
    def __init__(self, query: typing.Annotated[numpy.typing.ArrayLike, numpy.int32]) -> None:
        ...
    def lengths(self, tokens: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], offsets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64]) -> numpy.typing.NDArray[numpy.int32]:
        """
        LCS of each candidate tokens[offsets[i]:offsets[i+1]] with the query, as int32 [num_candidates].
        """
    @property
    def length(self) -> int:
        ...
class Trie:
    """
    Immutable breadth-first CSR prefix tree over int32 token sequences.
    """
    @staticmethod
    def build(tokens: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], offsets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], eos_id: typing.SupportsInt | typing.SupportsIndex) -> Trie:
        """
        Build from a flat int32 token buffer and int64 offsets [num_sequences + 1]; eos_id -1 for none.
        """
    @staticmethod
    def load(path: str, mmap: bool) -> Trie:
        ...
    def arrays(self) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """
        (child_begin, child_token, terminal): read-only views of the CSR arrays.
        """
    def children(self, node: typing.SupportsInt | typing.SupportsIndex) -> tuple[numpy.typing.NDArray[numpy.int32], numpy.typing.NDArray[numpy.int32]]:
        ...
    def is_terminal(self, node: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def save(self, path: str) -> None:
        ...
    def step(self, nodes: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], tokens: typing.Annotated[numpy.typing.ArrayLike, numpy.int32]) -> numpy.typing.NDArray[numpy.int32]:
        ...
    def walk(self, seq: typing.Annotated[numpy.typing.ArrayLike, numpy.int32]) -> int:
        ...
    @property
    def depth(self) -> int:
        ...
    @property
    def eos_id(self) -> int:
        ...
    @property
    def max_token(self) -> int:
        ...
    @property
    def memory_mapped(self) -> bool:
        ...
    @property
    def num_items(self) -> int:
        ...
    @property
    def num_nodes(self) -> int:
        ...
def assign(cost: typing.Annotated[numpy.typing.ArrayLike, numpy.float64], maximize: bool, row_lens: typing.Any = None, col_lens: typing.Any = None) -> tuple[numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int32]]:
    """
    Solve a batch of assignment problems. cost: float64 [batch, rows, cols], any strides; row_lens and
    col_lens: optional int64 [batch]. Returns (col_of_row int64 [batch, rows] with -1 for unassigned
    rows, status int32 [batch]: 0 ok, 1 infeasible, 2 NaN or -inf entries).
    """
def assign_matrix(cost: typing.Annotated[numpy.typing.ArrayLike, numpy.float64], maximize: bool) -> tuple[numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int64], int]:
    """
    Solve one float64 [rows, cols] problem (any strides). Returns (row_ind, col_ind, status) with
    SciPy's index arrays (empty unless status is 0).
    """
def beam_step(logits_ptr: typing.SupportsInt | typing.SupportsIndex, vocab: typing.SupportsInt | typing.SupportsIndex, row_stride: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, batch_size: typing.SupportsInt | typing.SupportsIndex, num_beams: typing.SupportsInt | typing.SupportsIndex, beam_scores: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], nodes: typing.Annotated[numpy.typing.ArrayLike, numpy.int32] | None, tries: collections.abc.Sequence[Trie], normalize_allowed: bool, eos_id: typing.SupportsInt | typing.SupportsIndex, delta_offsets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64] | None = None, deltas: typing.Annotated[numpy.typing.ArrayLike, numpy.int32] | None = None) -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int32], numpy.typing.NDArray[numpy.int32], numpy.typing.NDArray[numpy.int32], numpy.typing.NDArray[numpy.int32]]:
    """
    The fused step alone: the best 2 * num_beams continuations per batch item, as (score, logprob, token, parent, node, count) arrays [batch, 2 * num_beams] (count: [batch]). nodes None: unconstrained; delta_offsets [rows + 1] and deltas: lookahead deltas per row.
    """
def build_info() -> dict:
    """
    Compiler, OpenMP and sanitizer settings this module was built with, and whether its AVX2 and AVX-512
    builds run.
    """
def lcs_lookahead(trie: ..., heights: typing.Annotated[numpy.typing.ArrayLike, numpy.uint8], patterns: collections.abc.Sequence[LcsPattern], nodes: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], generated: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], pattern_of_row: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], start_after: typing.SupportsInt | typing.SupportsIndex, max_nodes: typing.SupportsInt | typing.SupportsIndex, applying_only: bool = False) -> tuple[numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int32], int, int]:
    """
    (row_offsets int64 [N+1], deltas int32, nodes visited, truncated child searches) of one lookahead call; applying_only leaves the rows the rule does not touch with empty slices.
    """
def sample_step(logits_ptr: typing.SupportsInt | typing.SupportsIndex, vocab: typing.SupportsInt | typing.SupportsIndex, row_stride: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, rows: typing.SupportsInt | typing.SupportsIndex, temperature: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], top_k: typing.SupportsInt | typing.SupportsIndex, top_p: typing.SupportsFloat | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, step: typing.SupportsInt | typing.SupportsIndex, active: typing.Annotated[numpy.typing.ArrayLike, numpy.uint8] | None, nodes: typing.Annotated[numpy.typing.ArrayLike, numpy.int32] | None, tries: collections.abc.Sequence[Trie], rows_per_trie: typing.SupportsInt | typing.SupportsIndex) -> tuple[numpy.typing.NDArray[numpy.int32], numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int32]]:
    """
    One sampling step: (token, logprob, node) arrays [rows]; logprob is the full-vocabulary log-softmax of the drawn token; inactive rows give token -1. nodes None: unconstrained.
    """
def subtree_heights(trie: ...) -> numpy.typing.NDArray[numpy.uint8]:
    """
    uint8 [num_nodes]: longest path from each node to a leaf, saturated at 255.
    """
def trie_constrain(trie: Trie, src_ptr: typing.SupportsInt | typing.SupportsIndex, dst_ptr: typing.SupportsInt | typing.SupportsIndex, rows: typing.SupportsInt | typing.SupportsIndex, vocab: typing.SupportsInt | typing.SupportsIndex, src_row_stride: typing.SupportsInt | typing.SupportsIndex, dst_row_stride: typing.SupportsInt | typing.SupportsIndex, elem_bytes: typing.SupportsInt | typing.SupportsIndex, neg_inf_bits: typing.SupportsInt | typing.SupportsIndex, nodes_ptr: typing.SupportsInt | typing.SupportsIndex, all_neg_inf_ptr: typing.SupportsInt | typing.SupportsIndex, previous_nodes_ptr: typing.SupportsInt | typing.SupportsIndex = 0) -> int:
    """
    Write each row's allowed scores (all where it has no continuation) and -inf elsewhere into dst (may be src); with previous_nodes_ptr, dst holds the output for those nodes and only what changed is rewritten. Returns -1, or the first row with NaN at a child token of its node, having written nothing.
    """
def trie_mask(logits_ptr: typing.SupportsInt | typing.SupportsIndex, rows: typing.SupportsInt | typing.SupportsIndex, vocab: typing.SupportsInt | typing.SupportsIndex, row_stride: typing.SupportsInt | typing.SupportsIndex, elem_bytes: typing.SupportsInt | typing.SupportsIndex, fill_bits: typing.SupportsInt | typing.SupportsIndex, nodes_ptr: typing.SupportsInt | typing.SupportsIndex, child_begin_ptr: typing.SupportsInt | typing.SupportsIndex, child_token_ptr: typing.SupportsInt | typing.SupportsIndex, num_nodes: typing.SupportsInt | typing.SupportsIndex, inf_bits: typing.SupportsInt | typing.SupportsIndex) -> tuple[int, int]:
    """
    Mask [rows, vocab] logits in place, unless it returns a row other than -1 in (bad_node_row, nan_row): the first row whose node is out of range, else the first with NaN at a child token (inf_bits: +inf's bits).
    """
def trie_walk(trie: Trie, ids_ptr: typing.SupportsInt | typing.SupportsIndex, rows: typing.SupportsInt | typing.SupportsIndex, row_stride: typing.SupportsInt | typing.SupportsIndex, start: typing.SupportsInt | typing.SupportsIndex, len: typing.SupportsInt | typing.SupportsIndex, nodes_ptr: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Node of every row after its int64 ids[start:start+len] (-1 when it leaves the trie).
    """
