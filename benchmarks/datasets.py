"""Synthetic catalogues shaped like the two kinds of trie users build.

- Semantic IDs (generative recommenders): 4 levels x 256 codes, level l code c is token 256*l + c + 2,
  vocabulary 32,000.
- Titles (entity linking): 3-15 tokens, Zipf-distributed ids over a 50,000 vocabulary, the shape of
  a tokenised title catalogue (very high fan-out near the root).

Both return (flat int32 tokens, int64 offsets), the Trie's fast-path input, deterministic per seed.
"""

from __future__ import annotations

import functools

import numpy as np

SEMANTIC_VOCAB = 32_000
TITLE_VOCAB = 50_000
EOS = 1


@functools.cache
def semantic_ids(num_items: int = 1_000_000, levels: int = 4, codes: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes_ = rng.integers(0, codes, size=(num_items, levels), dtype=np.int32)
    tokens = (codes_ + np.arange(levels, dtype=np.int32) * codes + 2).reshape(-1)
    offsets = np.arange(num_items + 1, dtype=np.int64) * levels
    return tokens, offsets


@functools.cache
def titles(num_items: int = 1_000_000, min_len: int = 3, max_len: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=num_items)
    offsets = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ranks = rng.zipf(1.1, size=int(offsets[-1]))
    tokens = ((ranks - 1) % (TITLE_VOCAB - 2) + 2).astype(np.int32)  # ids 0, 1 reserved (pad, eos)
    return tokens, offsets


def as_lists(tokens: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    flat = tokens.tolist()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
