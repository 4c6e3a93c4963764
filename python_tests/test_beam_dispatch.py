"""The search loop's route for CUDA logits, checked without a GPU.

A stand-in for the _cuda module (filling _CudaStep's buffers through their raw pointers with the CPU
fused step's candidates) checks that CUDA logits take the candidate route (BeamSearchState.
step_candidates), that the route gives the same search as the CPU one, that device errors raise the
CPU step's messages, and that CPU logits and lookahead searches never take it.
"""

from __future__ import annotations

import contextlib
import ctypes
import random

import numpy as np
import pytest
import torch

import pyfastseq as fs
import pyfastseq.search as search
from pyfastseq import _backend
from beam_models import PrefixModel
from test_beam_cuda import EOS, random_trie

pytestmark = pytest.mark.native


class _HostKernel:
    """Stands in for the _cuda module on the CPU: reads and writes the buffers _CudaStep lays out
    (through their raw pointers, as the kernel does) and fills them with the CPU fused step."""

    def __init__(self, trie=None, error=None):
        self.trie, self.error, self.launches, self.enabled = trie, error, 0, True

    @staticmethod
    def beam_step_workspace_bytes(rows, num_candidates):
        return 4 * rows

    @staticmethod
    def beam_step_error_detail_offset(rows, num_candidates):
        return 0

    def beam_step(self, logits, vocab, row_stride, dtype, batch, beams, scores_ptr, nodes_ptr, tries_ptr, num_tries,
                  normalize_allowed, eos_id, blocked_token, block_leaves, *outputs):
        *cand_ptrs, count_ptr, error_ptr, workspace_ptr, _stream = outputs
        self.launches += 1
        rows = batch * beams
        scores = _view(scores_ptr, np.float32, rows).copy()
        nodes = _view(nodes_ptr, np.int32, rows).copy() if nodes_ptr else None
        assert blocked_token == -1 and not block_leaves  # the CPU step binding has no min_length blocking
        tries = []
        if nodes_ptr:
            views = _view(tries_ptr, np.int64, 4 * num_tries).reshape(num_tries, 4)
            begin, token = self.trie._arrays_on(torch.device("cpu"))
            assert views.tolist() == [[begin.data_ptr(), token.data_ptr(), 0, self.trie.num_nodes]] * num_tries
            tries = [self.trie._native]
        if self.error is not None:
            row, code, detail = self.error
            _view(error_ptr, np.uint64, 1)[0] = row * 256 + code
            _view(workspace_ptr, np.int32, rows)[row] = detail
            return 0
        arrays = fs._C.beam_step(logits, vocab, row_stride, dtype, batch, beams, scores, nodes, tries,
                                 normalize_allowed, eos_id)
        for ptr, values in zip(cand_ptrs + [count_ptr], arrays):
            _view(ptr, values.dtype, values.size)[:] = values.reshape(-1)
        return 0


def _view(ptr, dtype, count):
    dtype = np.dtype(dtype)
    return np.ctypeslib.as_array((ctypes.c_char * (dtype.itemsize * count)).from_address(ptr)).view(dtype)


@pytest.fixture
def host_kernel(monkeypatch):
    """Routes search() through _CudaStep with CPU tensors and _HostKernel for the kernel."""
    kernel = _HostKernel()
    monkeypatch.setattr(_backend, "on_gpu", lambda logits: kernel.enabled)
    monkeypatch.setattr(_backend, "cuda", lambda: kernel)
    monkeypatch.setattr(_backend, "stream_of", lambda tensor: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    return kernel


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
def test_dispatch__cuda_logits_take_the_candidate_route__same_search(host_kernel, which):
    host_kernel.enabled = False
    want = _searches()[which]().search(PrefixModel(40, 4), batch_size=2)
    host_kernel.enabled = True
    searcher = _searches()[which]()
    host_kernel.trie = getattr(searcher, "tries", [None])[0]
    model = PrefixModel(40, 4)
    got = searcher.search(model, batch_size=2)
    assert host_kernel.launches == model.calls  # one launch per step
    assert got == want


@pytest.mark.parametrize("code,detail,match", [
    (1, 0, "logits row 3 contains NaN"),
    (3, 17, "row 3 is a live beam at trie node 17, which has no children"),
    (4, 99, "the trie holds token id 99 but logits has only 40 columns"),
])
def test_dispatch__device_errors_raise_like_the_cpu_step(host_kernel, code, detail, match):
    searcher = _searches()[0]()
    host_kernel.trie, host_kernel.error = searcher.tries[0], (3, code, detail)
    with pytest.raises(ValueError, match=match):
        searcher.search(PrefixModel(40, 4), batch_size=2)


def test_dispatch__only_cuda_tensors_are_cuda():
    assert not _backend.on_gpu(torch.zeros(2, 3))
    assert not _backend.on_gpu(torch.zeros(2, 3, device="meta"))


def test_dispatch__build_without_cuda_module_keeps_the_cpu_step(monkeypatch):
    def missing():
        raise RuntimeError("pyfastseq was built without its CUDA module")

    monkeypatch.setattr(_backend, "on_gpu", lambda logits: True)
    monkeypatch.setattr(_backend, "cuda", missing)
    monkeypatch.setattr(search, "_CudaStep", _Forbidden)
    out = _searches()[2]().search(PrefixModel(40, 4), batch_size=2)
    assert out.sequences[0]


def test_dispatch__over_1024_beams_keeps_the_cpu_step(monkeypatch):
    monkeypatch.setattr(_backend, "on_gpu", lambda logits: True)
    monkeypatch.setattr(search, "_CudaStep", _Forbidden)
    out = fs.BeamSearch(EOS, num_beams=1025, max_length=2).search(PrefixModel(40, 1), batch_size=1)
    assert len(out.sequences[0]) == 1


def test_dispatch__lookahead_keeps_the_cpu_step(monkeypatch):
    class NoDeltas:
        def deltas(self, trie, nodes, generated, batch_index):
            offsets = np.zeros(len(nodes) + 1, dtype=np.int64)
            for r, n in enumerate(nodes.tolist()):
                offsets[r + 1] = offsets[r] + (len(trie.children(n)[0]) if n >= 0 else 0)
            return offsets, np.zeros(offsets[-1], dtype=np.int32)

    trie = random_trie(random.Random(2), 30, 100, 4)
    monkeypatch.setattr(_backend, "on_gpu", lambda logits: True)
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
