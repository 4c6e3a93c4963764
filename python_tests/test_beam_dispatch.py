"""The search loop's route for CUDA logits, checked without a GPU.

A stand-in for the CUDA step (computing its candidates with the CPU fused step) checks that CUDA
logits take the candidate route (BeamSearchState.step_candidates), that the route gives the same
search as the CPU one, and that CPU logits and lookahead searches never take it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import pyfastseq as fs
import pyfastseq.search as search
from beam_models import PrefixModel
from test_beam_cuda import EOS, random_trie

pytestmark = pytest.mark.native


class _CpuStandIn:
    """Computes the candidates the CUDA step would return with the CPU fused step."""

    made = 0

    def __init__(self, device, batch_size, num_beams, tries, normalize_allowed, eos_id, min_length):
        type(self).made += 1
        self.k, self.trie = num_beams, tries[0] if tries else None
        self.normalize = "allowed" if normalize_allowed else "full"
        assert min_length == 0  # the CPU step binding has no min_length blocking

    def candidates(self, state, logits):
        scores, nodes = state.beams
        nodes = torch.from_numpy(nodes) if self.trie is not None else None
        out = search._beam_step(logits, torch.from_numpy(scores), self.k, self.trie, nodes, self.normalize)
        return tuple(out[name].numpy() for name in search._CANDIDATE_NAMES)


class _Forbidden:
    def __init__(self, *args, **kwargs):
        raise AssertionError("the CUDA step ran for CPU logits")


def _searches():
    trie = random_trie(random.Random(11), 40, 200, 5)
    return [
        lambda: fs.TrieBeamSearch(trie, num_beams=6, max_length=trie.depth, num_return_sequences=3,
                                  output_token_scores=True),
        lambda: fs.TrieBeamSearch(trie, num_beams=4, max_length=trie.depth, normalize="allowed"),
        lambda: fs.BeamSearch(EOS, num_beams=5, max_length=6, early_stopping="never", num_return_sequences=2),
    ]


@pytest.mark.parametrize("which", range(3))
def test_dispatch__cpu_logits_never_take_the_cuda_step(monkeypatch, which):
    monkeypatch.setattr(search, "_CudaStep", _Forbidden)
    out = _searches()[which]().search(PrefixModel(40, 4), batch_size=2)
    assert out.sequences[0]


@pytest.mark.parametrize("which", range(3))
def test_dispatch__cuda_logits_take_the_candidate_route__same_search(monkeypatch, which):
    want = _searches()[which]().search(PrefixModel(40, 4), batch_size=2)
    monkeypatch.setattr(search, "_is_cuda", lambda logits: True)
    monkeypatch.setattr(search, "_CudaStep", _CpuStandIn)
    _CpuStandIn.made = 0
    got = _searches()[which]().search(PrefixModel(40, 4), batch_size=2)
    assert _CpuStandIn.made == 1  # made once per search, reused every step
    assert got == want


def test_dispatch__only_cuda_tensors_are_cuda():
    assert not search._is_cuda(torch.zeros(2, 3))
    assert not search._is_cuda(torch.zeros(2, 3, device="meta"))


def test_dispatch__lookahead_keeps_the_cpu_step(monkeypatch):
    class NoDeltas:
        def deltas(self, trie, nodes, generated, batch_index):
            offsets = np.zeros(len(nodes) + 1, dtype=np.int64)
            for r, n in enumerate(nodes.tolist()):
                offsets[r + 1] = offsets[r] + (len(trie.children(n)[0]) if n >= 0 else 0)
            return offsets, np.zeros(offsets[-1], dtype=np.int32)

    trie = random_trie(random.Random(2), 30, 100, 4)
    monkeypatch.setattr(search, "_is_cuda", lambda logits: True)
    monkeypatch.setattr(search, "_CudaStep", _Forbidden)
    out = fs.TrieBeamSearch(trie, num_beams=3, max_length=trie.depth, lookahead=NoDeltas()).search(
        PrefixModel(30, 1), batch_size=1)
    assert all(trie.contains(s) for s in out.sequences[0])


def test_step_candidates__rejects_foreign_parents():
    state = fs.BeamSearch(EOS, num_beams=2, max_length=3)._start(2)[0]
    cands = [np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32), np.full((2, 4), 5, np.int32),
             np.zeros((2, 4), np.int32), np.full((2, 4), -1, np.int32), np.array([4, 4], np.int32)]
    with pytest.raises(ValueError, match="not a beam of batch item 1"):
        state.step_candidates(*cands)
    with pytest.raises(ValueError, match="batch_size \\* 2 \\* num_beams"):
        state.step_candidates(cands[0][:1], *cands[1:])
