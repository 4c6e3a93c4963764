"""The search loop's routes: CUDA logits run the device search (here on the CUDA emulator), with or
without a lookahead; CPU logits, more than 1,024 beams and builds without the CUDA module the CPU
step.
"""

from __future__ import annotations

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


class _Forbidden:
    def __init__(self, *args, **kwargs):
        raise AssertionError("the device search ran")


def _searches():
    trie = random_trie(random.Random(11), 40, 200, 5)
    return [
        lambda: fs.TrieBeamSearch(trie, num_beams=6, max_length=trie.depth, num_return_sequences=3,
                                  output_token_scores=True),
        lambda: fs.TrieBeamSearch(trie, num_beams=4, max_length=trie.depth, normalize="allowed"),
        lambda: fs.BeamSearch(EOS, num_beams=5, max_length=6, early_stopping="never", num_return_sequences=2),
        lambda: fs.TrieBeamSearch(trie, num_beams=4, max_length=trie.depth, lookahead=fs.LCSLookahead([5, 9, 12, 20, 33])),
    ]


@pytest.mark.parametrize("which", range(4))
def test_dispatch__cpu_logits_never_take_the_cuda_step(monkeypatch, which):
    monkeypatch.setattr(search, "DeviceSearch", _Forbidden)
    out = _searches()[which]().search(PrefixModel(40, 4), batch_size=2)
    assert out.sequences[0]


class _Counting:
    """The emulated _cuda module, counting kernel launches."""

    def __init__(self, ext):
        self.ext, self.launches = ext, {"beam_step": 0, "beam_select": 0}

    def __getattr__(self, name):
        attr = getattr(self.ext, name)
        if name not in self.launches:
            return attr

        def launch(*args):
            self.launches[name] += 1
            return attr(*args)
        return launch


@pytest.mark.parametrize("which", range(4))
def test_dispatch__cuda_logits_take_the_device_search__same_search(on_cuda_emulator, monkeypatch, which):
    with monkeypatch.context() as cpu:
        cpu.setattr(_backend, "on_gpu", lambda tensor: False)
        want = _searches()[which]().search(PrefixModel(40, 4), batch_size=2)
    counting = _Counting(on_cuda_emulator)
    monkeypatch.setattr(_backend, "cuda", lambda: counting)
    model = PrefixModel(40, 4)
    got = _searches()[which]().search(model, batch_size=2)
    # One launch of each kernel per step. The emulator reports each step's status at once; with a
    # lookahead the model's next step is queued before the status is read, one call past the end.
    steps = model.calls - (1 if which == 3 else 0)
    assert counting.launches == {"beam_step": steps, "beam_select": steps}
    assert got.sequences == want.sequences and got.finished == want.finished
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("at_call", [1, 3])
def test_dispatch__device_search_raises_a_later_steps_error(on_cuda_emulator, at_call):
    model = PrefixModel(40, 4)

    def step_fn(tokens, beam_idx):
        logits = model(tokens, beam_idx)
        if model.calls == at_call:
            logits[3, 7] = float("nan")
        return logits

    with pytest.raises(ValueError, match="logits row 3 contains NaN"):
        fs.BeamSearch(EOS, num_beams=5, max_length=6, early_stopping="never").search(step_fn, batch_size=2)


def test_dispatch__only_cuda_tensors_are_cuda():
    assert not _backend.on_gpu(torch.zeros(2, 3))
    assert not _backend.on_gpu(torch.zeros(2, 3, device="meta"))


def test_dispatch__build_without_cuda_module_keeps_the_cpu_step(monkeypatch):
    def missing():
        raise RuntimeError("pyfastseq was built without its CUDA module")

    monkeypatch.setattr(_backend, "on_gpu", lambda logits: True)
    monkeypatch.setattr(_backend, "cuda", missing)
    monkeypatch.setattr(search, "DeviceSearch", _Forbidden)
    out = _searches()[2]().search(PrefixModel(40, 4), batch_size=2)
    assert out.sequences[0]


def test_dispatch__over_1024_beams_keeps_the_cpu_step(monkeypatch):
    monkeypatch.setattr(_backend, "on_gpu", lambda logits: True)
    monkeypatch.setattr(search, "DeviceSearch", _Forbidden)
    out = fs.BeamSearch(EOS, num_beams=1025, max_length=2).search(PrefixModel(40, 1), batch_size=1)
    assert len(out.sequences[0]) == 1


def test_dispatch__device_search_rejects_logits_that_change_device(on_cuda_emulator):
    model = PrefixModel(40, 4)

    def step_fn(tokens, beam_idx):
        logits = model(tokens, beam_idx)
        return logits if model.calls == 1 else logits.to("meta")

    with pytest.raises(ValueError, match="step_fn returned logits on meta"):
        fs.BeamSearch(EOS, num_beams=2, max_length=4).search(step_fn, batch_size=1)
