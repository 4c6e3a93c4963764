"""Dict-of-dicts prefix tree (the structure GENRE and most users build by hand)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

_END = -1  # key marking that a sequence ends at this node


class DictTrie:
    """A nested-dict trie with the same lookup semantics as :class:`pyfastseq.Trie`."""

    def __init__(self, sequences: Iterable[Sequence[int]], eos_id: int | None = None):
        self.root: dict = {}
        self.eos_id = eos_id
        for seq in sequences:
            seq = list(seq)
            if eos_id is not None and (not seq or seq[-1] != eos_id):
                seq.append(eos_id)
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            node[_END] = {}

    def node(self, prefix: Sequence[int]) -> dict | None:
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return None
        return node

    def children(self, prefix: Sequence[int]) -> list[int]:
        """Allowed next tokens after ``prefix``, ascending ([] when not a prefix)."""
        node = self.node(prefix)
        return [] if node is None else sorted(t for t in node if t != _END)

    def contains(self, seq: Sequence[int]) -> bool:
        node = self.node(seq)
        return node is not None and _END in node

    def sequences(self) -> list[list[int]]:
        """Every stored sequence, in lexicographic order."""
        out: list[list[int]] = []

        def visit(node: dict, path: list[int]) -> None:
            if _END in node:
                out.append(list(path))
            for token in sorted(t for t in node if t != _END):
                visit(node[token], path + [token])

        visit(self.root, [])
        return out


def mask_logits(logits: torch.Tensor, allowed: list[list[int]], fill: float = float("-inf")) -> torch.Tensor:
    """Out-of-place reference mask: row r keeps only the tokens in ``allowed[r]``."""
    keep = torch.zeros(logits.shape, dtype=torch.bool)
    for row, tokens in enumerate(allowed):
        keep[row, tokens] = True
    return logits.masked_fill(~keep.to(logits.device), fill)
