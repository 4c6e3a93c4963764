"""Plain-Python LCS and the seed-001 lookahead rule, by dynamic programming and brute force."""

from __future__ import annotations

from typing import Sequence

import torch

from .trie import DictTrie


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Longest common subsequence length by the textbook O(len(a) * len(b)) DP, one row at a time."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j - 1], above)
            diagonal = above
    return row[-1]


def segment(tokens: Sequence[int], start_after: int | None) -> list[int]:
    """What follows the first ``start_after`` (everything when None); None if it does not occur."""
    tokens = list(tokens)
    if start_after is None:
        return tokens
    return tokens[tokens.index(start_after) + 1 :] if start_after in tokens else None


def lookahead_deltas(
    trie: DictTrie, prefix: Sequence[int], query: Sequence[int], start_after: int | None = None
) -> list[int]:
    """Δ of every allowed next token after ``prefix`` (ascending token order), by enumerating every
    stored sequence through it:

        Δ(c) = max over stored P starting with prefix + [c] of LCS(seg(P), Q) − LCS(seg(prefix), Q)

    Zeros where the rule does not apply: fewer than two allowed tokens, or ``start_after`` given and
    not in ``prefix``.
    """
    prefix = list(prefix)
    allowed = trie.children(prefix)
    seg = segment(prefix, start_after)
    if len(allowed) < 2 or seg is None:
        return [0] * len(allowed)
    base = lcs_length(seg, query)
    stored = trie.sequences()
    deltas = []
    for token in allowed:
        head = prefix + [token]
        best = max(lcs_length(segment(p, start_after), query) for p in stored if p[: len(head)] == head)
        deltas.append(best - base)
    return deltas


def lookahead_reshape(logprobs: torch.Tensor, allowed_tokens: Sequence[int], deltas: Sequence[int]) -> torch.Tensor:
    """The seed-001 reshaping of one row: ``p_c ← p_c^(1/(Δ(c)+1))`` renormalised over the allowed
    tokens to the probability mass they had.

    Args:
        logprobs: ``[V]`` full-vocabulary log-probabilities of the row (``log_softmax(logits)``).
        allowed_tokens: the row's allowed next tokens (the trie children), any order.
        deltas: Δ of each allowed token, same order.

    Returns:
        ``[len(allowed_tokens)]`` new log-probabilities of the allowed tokens. They sum (in
        probability) to the allowed tokens' original mass, so a beam that renormalises over the
        allowed tokens (``normalize="allowed"``) gets exactly the seed's ``p^(1/(Δ+1)) / Σ``, and one
        that keeps full-vocabulary scores sees the row's total unchanged. With Δ = 0 everywhere the
        row is returned unchanged.
    """
    lp = logprobs[torch.as_tensor(list(allowed_tokens), dtype=torch.long)]
    d = torch.as_tensor(list(deltas), dtype=lp.dtype)
    mass = torch.logsumexp(lp, 0)
    if not bool((d != 0).any()) or torch.isinf(mass):
        return lp.clone()
    scaled = lp / (d + 1)
    return scaled - torch.logsumexp(scaled, 0) + mass
