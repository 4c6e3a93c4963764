"""fs.hf.TrieLogitsProcessor against transformers' PrefixConstrainedLogitsProcessor + a dict trie."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor  # noqa: E402

import pyfastseq as fs  # noqa: E402
from pyfastseq.reference.trie import DictTrie  # noqa: E402

from conftest import devices  # noqa: E402

pytestmark = pytest.mark.native

VOCAB = 40
PAD, EOS = 0, 1


def catalogue(seed, n=30, vocab=VOCAB):
    """Random entries of 1-5 tokens over ids >= 3, with some entries that are prefixes of others."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(3, vocab, size=rng.integers(1, 6)).tolist() for _ in range(n)]
    seqs += [s[: len(s) // 2] for s in seqs[:8] if len(s) > 1]
    return seqs


def reference_fn(dict_trie, start, vocab):
    """The usual prefix_allowed_tokens_fn: the trie's children, or every token where there are none."""
    everything = list(range(vocab))

    def allowed(batch_id, sent):
        return dict_trie.children(sent[start:].tolist()) or everything

    return allowed


def test_importing_pyfastseq_does_not_import_transformers():
    from conftest import run_python

    code = "import sys, pyfastseq; assert 'transformers' not in sys.modules"  # fs.hf loads it on use
    out = run_python(code)
    assert out.returncode == 0, out.stderr


# -- the processor alone ----------------------------------------------------------------------


def random_rows(rng, seqs, rows, prompt, vocab):
    """Rows of prompt + a live trie prefix, a finished entry padded, junk, or a leaf."""
    out = []
    width = prompt + 6
    for _ in range(rows):
        seq = seqs[rng.integers(len(seqs))] + [EOS]
        kind = rng.integers(4)
        if kind == 0:
            gen = seq[: rng.integers(0, len(seq))]
        elif kind == 1:
            gen = seq
        elif kind == 2:
            gen = rng.integers(0, vocab, size=rng.integers(1, 6)).tolist()
        else:
            gen = seq[: rng.integers(0, len(seq))] + [rng.integers(0, vocab)]
        out.append(rng.integers(0, vocab, size=prompt).tolist() + gen)
    length = max(len(r) for r in out)
    return torch.tensor([r + [PAD] * (length - len(r)) for r in out]), length, width


def random_step(rng, seqs, rows, prompt, length, dtype):
    """ids [rows, length] of random_rows' kinds, and scores with -inf patches so that some rows, and
    some whole batch items, have no finite allowed score."""
    ids = torch.from_numpy(rng.integers(0, VOCAB, size=(rows, length)))
    live, _, _ = random_rows(rng, seqs, rows, prompt, VOCAB)
    ids[:, : min(length, live.shape[1])] = live[:, :length]
    scores = torch.randn(rows, VOCAB + 3).to(dtype)
    scores[rng.random(scores.shape) < 0.3] = float("-inf")
    scores[torch.from_numpy(rng.random(rows) < 0.3)] = float("-inf")
    return ids, scores


# transformers 5 gives a batch item whose allowed scores are all -inf a score of 0 on its allowed
# tokens, as TrieLogitsProcessor does; earlier releases leave such items at -inf everywhere.
PEER_FORCES_UNSATISFIABLE = bool(PrefixConstrainedLogitsProcessor(lambda b, ids: [0], 1)(
    torch.zeros(1, 1, dtype=torch.long), torch.full((1, 2), float("-inf")))[0, 0] == 0)


def satisfiable_rows(expected, num_beams):
    """The rows of batch items with a finite allowed score, where every transformers release agrees."""
    stuck = expected.amax(dim=1).isneginf().view(-1, num_beams).all(dim=1)
    return ~stuck.repeat_interleave(num_beams)


# How the processor writes its output (see TrieLogitsProcessor's inplace and reuse_output).
MODES = {"new": {}, "inplace": {"inplace": True}, "reuse_output": {"reuse_output": True}}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_beams", [1, 2, 4])
@pytest.mark.parametrize("seed", range(3))
def test_processor_matches_prefix_constrained__seed__beams__dtype__mode(seed, num_beams, dtype, mode, device):
    rng = np.random.default_rng(seed)
    seqs = catalogue(seed)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    prompt = int(rng.integers(0, 4))
    rows = 4 * num_beams
    processor = fs.hf.TrieLogitsProcessor(trie, prompt_len=prompt, num_beams=num_beams, **MODES[mode])
    for length in range(prompt, prompt + 7):
        ids, scores = random_step(rng, seqs, rows, prompt, length, dtype)
        scores, ids = scores.to(device), ids.to(device)
        before = scores.clone()
        expected = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, prompt, VOCAB + 3), num_beams)(ids, scores)
        got = processor(ids, scores)
        assert got.dtype == dtype and got.device == scores.device
        if PEER_FORCES_UNSATISFIABLE:
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        else:
            rows_kept = satisfiable_rows(expected, num_beams)
            torch.testing.assert_close(got[rows_kept], expected[rows_kept], rtol=0, atol=0)
        if mode == "inplace":
            assert got is scores
        else:  # like every transformers processor
            assert torch.equal(scores, before)


class ConstrainSpy:
    """Stands in for the native module in fs.hf, counting the constrain passes that rewrote a buffer
    in part (given the nodes it was last written for)."""

    def __init__(self, native):
        self.native, self.partial = native, 0

    def __getattr__(self, name):
        return getattr(self.native, name)

    def trie_constrain(self, *args):
        self.partial += args[-1] != 0  # previous_nodes_ptr
        return self.native.trie_constrain(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("held", [0, 1])
@pytest.mark.parametrize("seed", range(3))
def test_reuse_output__rewrites_its_buffers_as_rows_move__seed__held(seed, held, dtype, monkeypatch):
    # Beam search drops each step's output before the next call (held 0): one buffer serves every
    # step. Greedy and sampling still hold the previous step's (held 1): two buffers take turns.
    spy = ConstrainSpy(fs.hf._C)
    monkeypatch.setattr(fs.hf, "_C", spy)
    rng = np.random.default_rng(seed)
    seqs = catalogue(seed)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    processor = fs.hf.TrieLogitsProcessor(trie, prompt_len=2, num_beams=2, reuse_output=True)
    kept, storages = [], set()
    for step in range(12):
        ids, scores = random_step(rng, seqs, 8, 2, int(rng.integers(2, 8)), dtype)
        expected = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, 2, VOCAB + 3), 2)(ids, scores)
        got = processor(ids, scores)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        storages.add(got.untyped_storage().data_ptr())
        kept = (kept + [got])[len(kept) + 1 - held:]
        del got
    assert len(storages) == held + 1
    assert spy.partial == 12 - (held + 1)  # every step after each buffer's first


def test_reuse_output__follows_changes_of_shape_dtype_layout_and_trie(monkeypatch):
    spy = ConstrainSpy(fs.hf._C)
    monkeypatch.setattr(fs.hf, "_C", spy)
    rng = np.random.default_rng(8)
    seqs, other_seqs = catalogue(8), catalogue(9)
    trie, other = fs.Trie(seqs, eos_id=EOS), fs.Trie(other_seqs, eos_id=EOS)
    processor = fs.hf.TrieLogitsProcessor(trie, prompt_len=1, num_beams=2, reuse_output=True)
    # (rows, dtype, column stride of scores, trie, whether the step may rewrite a buffer in part).
    # The pool keeps two buffers; strided scores are read through a contiguous copy.
    steps = [(8, torch.float32, 1, trie, False),  # buffer A
             (4, torch.float32, 1, trie, False),  # B: A has the wrong shape
             (8, torch.float32, 2, trie, True),   # A again
             (8, torch.float16, 1, trie, False),  # C, which evicts B
             (8, torch.float16, 1, trie, True),   # C
             (8, torch.float16, 1, other, False),  # C, written for another trie
             (8, torch.float16, 1, other, True),  # C
             (8, torch.float32, 1, trie, True)]   # A, still as its last step left it
    for rows, dtype, stride, current, partial in steps:
        processor.trie = current
        before = spy.partial
        dict_trie = DictTrie(seqs if current is trie else other_seqs, eos_id=EOS)
        ids, scores = random_step(rng, seqs if current is trie else other_seqs, rows, 1, 4, dtype)
        if stride > 1:
            scores = torch.stack([scores] * stride, dim=2)[:, :, 0]
        expected = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, 1, VOCAB + 3), 2)(ids, scores)
        torch.testing.assert_close(processor(ids, scores), expected, rtol=0, atol=0)
        assert spy.partial - before == partial


PROPERTY_SEQS = catalogue(12)
PROPERTY_TRIE, PROPERTY_DICT_TRIE = fs.Trie(PROPERTY_SEQS, eos_id=EOS), DictTrie(PROPERTY_SEQS, eos_id=EOS)
# What the caller does with a step's output before the next call.
AFTERWARDS = {
    "drop": lambda out, kept: None,
    "hold": lambda out, kept: kept.append(out),
    "hold a view": lambda out, kept: kept.append(out[1:, 2:]),
    "write": lambda out, kept: out.fill_(0.5),
    "write a view": lambda out, kept: out[:, 5:9].zero_(),
    "release all": lambda out, kept: kept.clear(),
}


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from([2, 4]), st.sampled_from([torch.float32, torch.bfloat16]),
                                st.integers(0, 2**32 - 1), st.sampled_from(list(AFTERWARDS))),
                      min_size=1, max_size=10))
def test_reuse_output__any_sequence_of_steps_matches_prefix_constrained(steps):
    # Any interleaving of shapes, dtypes, held or written outputs: every step as the reference.
    processor = fs.hf.TrieLogitsProcessor(PROPERTY_TRIE, prompt_len=1, num_beams=2, reuse_output=True)
    reference = PrefixConstrainedLogitsProcessor(reference_fn(PROPERTY_DICT_TRIE, 1, VOCAB + 3), 2)
    kept = []
    for rows, dtype, seed, afterwards in steps:
        rng = np.random.default_rng(seed)
        ids, scores = random_step(rng, PROPERTY_SEQS, rows, 1, int(rng.integers(1, 7)), dtype)
        expected = reference(ids, scores)
        held = [view.clone() for view in kept]
        out = processor(ids, scores)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert all(torch.equal(view, copy) for view, copy in zip(kept, held))  # held outputs left alone
        AFTERWARDS[afterwards](out, kept)
        del out


def test_reuse_output__survives_its_storage_freed_in_place():
    seqs = catalogue(2)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    processor = fs.hf.TrieLogitsProcessor(trie, reuse_output=True)
    reference = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, 0, VOCAB), 1)
    ids, scores = torch.tensor([seqs[0][:1], seqs[1][:1]]), torch.randn(2, VOCAB)
    out = processor(ids, scores)
    out.untyped_storage().resize_(0)  # as FSDP frees parameters
    del out
    assert torch.equal(processor(ids, scores), reference(ids, scores))


def test_reuse_output__never_rewrites_an_output_still_held_or_written_to():
    seqs = catalogue(4)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    reference = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, 0, VOCAB), 1)
    processor = fs.hf.TrieLogitsProcessor(trie, reuse_output=True)
    steps = [torch.tensor([s[:1], s[:1]]) for s in seqs[:6]]  # rows at a first token, moving every step
    rng = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, VOCAB, generator=rng) for _ in steps]

    outputs = [processor(ids, s) for ids, s in zip(steps, scores)]  # all held, as output_scores does
    assert len({out.untyped_storage().data_ptr() for out in outputs}) == len(steps)
    for out, ids, s in zip(outputs, steps, scores):
        assert torch.equal(out, reference(ids, s))
    kept_column = outputs[-1][:, 3:5]  # a view keeps the storage as well
    del outputs
    got = processor(steps[0], scores[0])
    assert torch.equal(got, reference(steps[0], scores[0]))
    assert torch.equal(kept_column, reference(steps[-1], scores[-1])[:, 3:5])

    # Written to in place, then dropped: the next step rewrites the whole buffer.
    for write in (lambda t: t.zero_(), lambda t: t[:, 7:9].fill_(1.0), lambda t: t.detach().add_(2.0)):
        write(got)
        del got
        got = processor(steps[1], scores[1])
        assert torch.equal(got, reference(steps[1], scores[1]))

    # An output made under inference_mode is an ordinary tensor, so writes to it are still seen.
    with torch.inference_mode():
        got = processor(steps[2], scores[2])
        got.zero_()
        del got
        assert torch.equal(processor(steps[3], scores[3]), reference(steps[3], scores[3]))


@pytest.mark.parametrize("inplace", [False, True])
def test_device_path_matches_native_path_on_cpu(inplace):
    # The path CUDA tensors take (walk natively, mask with Trie.mask_logits) forced on CPU tensors.
    rng = np.random.default_rng(11)
    seqs = catalogue(11)
    trie = fs.Trie(seqs, eos_id=EOS)
    ids, _, _ = random_rows(rng, seqs, 16, 2, VOCAB)
    scores = torch.randn(16, VOCAB)
    scores[torch.from_numpy(rng.random(scores.shape) < 0.5)] = float("-inf")
    scores[::3] = float("-inf")
    proc = fs.hf.TrieLogitsProcessor(trie, prompt_len=2, num_beams=2, inplace=inplace)
    nodes = proc.nodes(ids)
    expected, expected_flags = proc._constrain_cpu(scores.clone(), torch.from_numpy(nodes))
    got, flags = proc._constrain_torch(scores.clone(), nodes)
    assert torch.equal(got, expected) and (flags == expected_flags).all() and flags.any()
    if not inplace:  # scores that require grad: both paths give a detached result
        weights = scores.clone().requires_grad_()
        got, _ = proc._constrain_torch(weights * 1.0, nodes)
        assert torch.equal(got, expected) and not got.requires_grad


def test_processor_walks_strided_and_int32_ids():
    seqs = catalogue(7)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    full = torch.tensor([[5, 5] + (seqs[i] + [EOS, EOS])[:2] + [9, 9] for i in range(6)])
    ids = full[:, :4]  # a view with row stride 6, as generate() slices its running buffer
    scores = torch.randn(6, 50)[:, :VOCAB]  # strided scores too
    expected = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, 2, VOCAB), 1)(ids, scores)
    for given in (ids, ids.to(torch.int32)):
        got = fs.hf.TrieLogitsProcessor(trie, prompt_len=2)(given, scores)
        assert torch.equal(got, expected)
    inplace = torch.stack([scores, scores], dim=2)[:, :, 0]  # column stride 2, written in place
    assert fs.hf.TrieLogitsProcessor(trie, prompt_len=2, inplace=True)(ids, inplace) is inplace
    assert torch.equal(inplace, expected)


def test_processor_in_place_on_scores_off_their_element_alignment():
    seqs = catalogue(7)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    ids = torch.tensor([[5, 5] + (seqs[i] + [EOS, EOS])[:2] for i in range(6)])
    buffer = bytearray(6 * VOCAB * 4 + 1)
    scores = torch.frombuffer(buffer, dtype=torch.float32, offset=1, count=6 * VOCAB).view(6, VOCAB)
    scores.copy_(torch.randn(6, VOCAB))
    expected = PrefixConstrainedLogitsProcessor(reference_fn(dict_trie, 2, VOCAB), 1)(ids, scores.clone())
    assert fs.hf.TrieLogitsProcessor(trie, prompt_len=2, inplace=True)(ids, scores) is scores
    assert torch.equal(scores, expected)


def test_nodes_and_bad_ids_never_raise():
    trie = fs.Trie([[3, 4], [3, 5, 6]], eos_id=EOS)
    proc = fs.hf.TrieLogitsProcessor(trie, prompt_len=1)
    ids = torch.tensor([[9, 3, 5], [9, -7, 5], [9, 2**40, 5], [9, 3, 4]])
    assert proc.nodes(ids).tolist() == [trie.walk([3, 5]), -1, -1, trie.walk([3, 4])]
    out = proc(ids, torch.zeros(4, 8))
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[2]).all()  # no continuation: all allowed
    assert torch.isfinite(out[0]).sum() == 1 and torch.isfinite(out[3]).tolist() == [False, True] + [False] * 6


def call_then_read_nodes(proc, ids):
    """One processor call on ``ids``, then its nodes read back as a stopping criterion would."""
    ids = torch.tensor(ids)
    proc(ids, torch.zeros(ids.shape[0], 10))
    return proc.nodes(ids).tolist()


def test_auto_prompt_len_follows_each_generation():
    trie = fs.Trie([[3, 4], [5]], eos_id=EOS)
    proc = fs.hf.TrieLogitsProcessor(trie, prompt_len="auto")
    step = functools.partial(call_then_read_nodes, proc)
    root, node3 = trie.root, trie.walk([3])
    assert step([[7, 7]]) == [root]
    assert step([[7, 7, 3]]) == [node3]
    assert step([[7, 7, 3, 4]]) == [trie.walk([3, 4])]
    assert step([[8]]) == [root]  # shorter: a new generation
    assert step([[8, 3]]) == [node3]
    assert step([[9, 9, 9]]) == [root]  # one longer but a different prompt
    assert step([[9, 9, 9, 3], [9, 9, 9, 5]]) == [root, root]  # more rows: a new generation
    proc.reset()
    assert step([[9, 9, 9, 3, 4], [9, 9, 9, 5, 1]]) == [root, root]
    assert step([[9, 9, 9, 3, 4, EOS], [9, 9, 9, 5, 1, 5]]) == [-1, trie.walk([5])]  # a row runs on
    assert step([[9, 9, 9, 3, 4, EOS, 0], [9, 9, 9, 5, 1, 5, 0]]) == [-1, -1]
    # Every row ended: transformers would have stopped, so this is a new generation's prompt.
    assert step([[9, 9, 9, 3, 4, EOS, 0, 0], [9, 9, 9, 5, 1, 5, 0, EOS]]) == [root, root]
    a, b = [9, 9, 9, 3, 4, EOS, 0, 0], [9, 9, 9, 5, 1, 5, 0, EOS]
    assert step([a + [3], b + [5]]) == [node3, trie.walk([5])]
    # Each row extends one of the last call's rows, if not its own: a beam search whose num_beams the
    # processor was not given reorders its rows so.
    assert step([a + [5, 1], b + [3, 4]]) == [trie.walk([5, EOS]), trie.walk([3, 4])]
    assert step([a + [5, 1, 0], b + [3, 4, 9]]) == [-1, -1]
    assert step([a + [5, 1, 0, 7], b + [3, 4, 3, 7]]) == [root, root]  # [3, 4, 3] was no row


def test_auto_prompt_len_follows_beams_through_their_parents():
    trie = fs.Trie([[3, 4], [3, 5], [6]], eos_id=EOS)
    proc = fs.hf.TrieLogitsProcessor(trie, prompt_len="auto", num_beams=2)
    step = functools.partial(call_then_read_nodes, proc)
    root = trie.root
    assert step([[7], [7], [8], [8]]) == [root] * 4
    assert step([[7, 3], [7, 6], [8, 6], [8, 3]]) == [trie.walk([3]), trie.walk([6]), trie.walk([6]), trie.walk([3])]
    # Both beams of each item from one parent, in another order: the same generation.
    assert step([[7, 3, 5], [7, 3, 4], [8, 3, 4], [8, 6, EOS]]) == [trie.walk([3, 5]), trie.walk([3, 4]),
                                                                   trie.walk([3, 4]), trie.walk([6, EOS])]
    # The first item's first row extends no beam of its item (6, EOS was the second item's).
    assert step([[7, 6, EOS, 1], [7, 3, 5, 1], [8, 3, 4, 1], [8, 3, 4, 1]]) == [root] * 4


def test_fixed_prompt_len_longer_than_input_ids_raises():
    proc = fs.hf.TrieLogitsProcessor(fs.Trie([[3, 4]]), prompt_len=4)
    assert proc.nodes(torch.tensor([[7, 7, 7, 7]])).tolist() == [0]
    with pytest.raises(ValueError, match="prompt_len=4 but input_ids has only 3 columns"):
        proc(torch.tensor([[7, 7, 3]]), torch.zeros(1, 8))


def test_constrain_binding_checks_previous_nodes():
    trie = fs.Trie([[3, 4], [5]], eos_id=EOS)
    scores, out = torch.zeros(2, 8), torch.zeros(2, 8)
    nodes = torch.tensor([0, 0], dtype=torch.int32)
    flags = torch.zeros(2, dtype=torch.uint8)

    def constrain(dst, previous):
        fs.hf._C.trie_constrain(trie._native, scores.data_ptr(), dst.data_ptr(), 2, 8, 8, 8, 4, 0xFF800000,
                                nodes.data_ptr(), flags.data_ptr(), previous.data_ptr())

    with pytest.raises(ValueError, match=r"previous_nodes\[1\] must be -1 or a node id"):
        constrain(out, torch.tensor([0, trie.num_nodes], dtype=torch.int32))
    with pytest.raises(ValueError, match="previous_nodes needs a dst apart from src"):
        constrain(scores, nodes)


def test_bad_arguments():
    trie = fs.Trie([[3, 4]])
    with pytest.raises(TypeError, match="trie"):
        fs.hf.TrieLogitsProcessor([[3, 4]])
    with pytest.raises(ValueError, match="num_beams"):
        fs.hf.TrieLogitsProcessor(trie, num_beams=0)
    for num_beams in (2.0, True, "2"):
        with pytest.raises(TypeError, match="num_beams"):
            fs.hf.TrieLogitsProcessor(trie, num_beams=num_beams)
    with pytest.raises(ValueError, match="inplace and reuse_output"):
        fs.hf.TrieLogitsProcessor(trie, inplace=True, reuse_output=True)
    proc = fs.hf.TrieLogitsProcessor(trie, num_beams=2)
    ids = torch.zeros(4, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="vocabulary"):
        proc(ids, torch.zeros(4, 4))
    with pytest.raises(TypeError, match="float32"):
        proc(ids, torch.zeros(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_beams"):
        proc(ids[:3], torch.zeros(3, 8))
    with pytest.raises(ValueError, match="scores"):
        proc(ids, torch.zeros(5, 8))
    with pytest.raises(TypeError, match="scores must be a 2-D tensor"):
        proc(ids, np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="scores is on the meta device"):
        proc(ids, torch.zeros(4, 8, device="meta"))


@pytest.mark.parametrize("prompt_len, error", [
    (-1, ValueError), ("AUTO", ValueError),
    (1.0, TypeError), (True, TypeError), (np.array([1, 2]), TypeError), (np.array(["auto"]), TypeError),
    (torch.tensor(1), TypeError),
])
def test_bad_prompt_len__prompt_len(prompt_len, error):
    with pytest.raises(error, match="prompt_len must be None, 'auto' or an int >= 0"):
        fs.hf.TrieLogitsProcessor(fs.Trie([[3, 4]]), prompt_len=prompt_len)


@pytest.mark.parametrize("prompt_len", [None, 0, 2, np.int64(2), 3, "auto", np.str_("auto")])
def test_good_prompt_len__prompt_len(prompt_len):
    trie = fs.Trie([[3, 4]])
    proc = fs.hf.TrieLogitsProcessor(trie, prompt_len=prompt_len)
    start = 0 if prompt_len is None else 3 if isinstance(prompt_len, str) else prompt_len  # "auto": the width
    assert proc.nodes(torch.tensor([[3, 4, 3]])).tolist() == [trie.walk([3, 4, 3][start:])]


@pytest.mark.parametrize("call", ["processor", "nodes"])
@pytest.mark.parametrize(
    "ids,error,message",
    [
        pytest.param(torch.tensor([[5.7], [9.9]]), TypeError, "input_ids must hold integer", id="float"),
        pytest.param(torch.tensor([[True], [False]]), TypeError, "input_ids must hold integer", id="bool"),
        pytest.param([[5], [9]], TypeError, "input_ids must be a 2-D tensor", id="list"),
        pytest.param(np.array([[5], [9]]), TypeError, "input_ids must be a 2-D tensor", id="numpy"),
        pytest.param(torch.tensor([5, 9]), ValueError, "input_ids must be a 2-D tensor", id="1-D"),
        pytest.param(torch.zeros(2, 1, dtype=torch.long, device="meta"), ValueError, "input_ids is on the meta",
                     id="meta"),
    ],
)
def test_bad_input_ids__ids__call(ids, error, message, call):
    proc = fs.hf.TrieLogitsProcessor(fs.Trie([[5, 7], [5, 8, 2], [9]], eos_id=2))
    with pytest.raises(error, match=message):
        proc(ids, torch.zeros(2, 12)) if call == "processor" else proc.nodes(ids)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("expanded", ["rows", "columns"])
def test_scores_sharing_memory__expanded__mode(expanded, mode):
    trie = fs.Trie([[5, 7], [5, 8, 2], [9]], eos_id=2)
    ids = torch.tensor([[5], [9]])
    scores = torch.randn(1, 12).expand(2, 12) if expanded == "rows" else torch.randn(2, 1).expand(2, 12)
    proc = fs.hf.TrieLogitsProcessor(trie, **MODES[mode])
    if mode == "inplace":
        with pytest.raises(ValueError, match="scores must not be an expanded or self-overlapping view"):
            proc(ids, scores)
        return
    expected = fs.hf.TrieLogitsProcessor(trie)(ids, scores.contiguous())
    for _ in range(2):  # reuse_output rewrites its buffer in full, then in part
        assert torch.equal(proc(ids, scores), expected)


def reference_constrain(ids, scores, dict_trie, start):
    """masked_fill with each row's allowed tokens from the dict trie (every token where it has none)."""
    allowed = reference_fn(dict_trie, start, scores.shape[1])
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    for row, sent in enumerate(ids):
        keep[row, allowed(row, sent)] = True
    return scores.masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("where", ["allowed", "disallowed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_scores__raise_where_the_processor_keeps_them__dtype__where__mode(dtype, where, mode):
    rng = np.random.default_rng(4)
    seqs = catalogue(4)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    ids = torch.tensor([[3, 4, s[0]] for s in seqs[:10]] + [[3, 4, 2], [3, 4, EOS]])  # the last two: no continuation
    allowed = [dict_trie.children(sent[2:].tolist()) for sent in ids]
    row = 5
    proc = fs.hf.TrieLogitsProcessor(trie, prompt_len=2, **MODES[mode])
    proc(ids, torch.randn(12, VOCAB).to(dtype))  # reuse_output: a buffer to rewrite in part next
    scores = torch.randn(12, VOCAB).to(dtype)
    if where == "allowed":
        scores[row, allowed[row][0]] = float("nan")
    else:
        scores[row, rng.choice(sorted(set(range(VOCAB)) - set(allowed[row])))] = float("nan")
    before = scores.clone()
    if where == "allowed":
        with pytest.raises(ValueError, match=rf"^scores row {row} holds NaN at a token its trie node allows"):
            proc(ids, scores)
        torch.testing.assert_close(scores, before, rtol=0, atol=0, equal_nan=True)  # nothing written
        scores[row, allowed[row][0]] = 0.0  # and the processor goes on
        before = scores.clone()
    torch.testing.assert_close(proc(ids, scores), reference_constrain(ids, before, dict_trie, 2), rtol=0, atol=0)


def test_nan_scores_of_rows_without_a_continuation_are_handed_back():
    # Such rows keep every score, and the processor never raises on the finished rows it is handed.
    trie = fs.Trie([[5, 7], [9]], eos_id=EOS)
    ids = torch.tensor([[5, 7, EOS, PAD], [9, EOS, PAD, PAD]])
    scores = torch.full((2, 12), float("nan"))
    torch.testing.assert_close(fs.hf.TrieLogitsProcessor(trie)(ids, scores), scores, rtol=0, atol=0, equal_nan=True)


@pytest.mark.cuda
def test_nan_scores_on_a_gpu_are_not_read_back():
    trie = fs.Trie([[5, 7], [9]], eos_id=EOS)
    scores = torch.zeros(1, 12, device="cuda")
    scores[0, 5] = float("nan")
    got = fs.hf.TrieLogitsProcessor(trie)(torch.zeros(1, 0, dtype=torch.long, device="cuda"), scores)
    assert got[0, 5].isnan() and got.isneginf().sum() == 10


def test_inplace_scores_requiring_grad__raise():
    # A native write into them would go unrecorded: the graph's gradient would not match the values.
    trie = fs.Trie([[5, 7], [9]], eos_id=EOS)
    ids = torch.tensor([[5], [9]])
    proc = fs.hf.TrieLogitsProcessor(trie, inplace=True)
    x = torch.randn(2, 12, requires_grad=True)
    for scores in (x, x * 2, torch.nn.Parameter(torch.randn(2, 12))):
        before = scores.detach().clone()
        with pytest.raises(ValueError, match="scores requires grad: inplace=True writes into it"):
            proc(ids, scores)
        assert torch.equal(scores.detach(), before)
    expected = fs.hf.TrieLogitsProcessor(trie)(ids, x)
    with torch.no_grad():
        assert proc(ids, x) is x
    assert torch.equal(x.detach(), expected)


# -- inside model.generate ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def bart():
    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                        pad_token_id=PAD, bos_token_id=2, eos_token_id=EOS, decoder_start_token_id=2,
                        forced_bos_token_id=None, forced_eos_token_id=None)
    return BartForConditionalGeneration(config).eval()


def generate_both(model, inputs, start, prompt_len, trie_seqs, num_beams, nrs, mode="new", **kwargs):
    trie, dict_trie = fs.Trie(trie_seqs, eos_id=EOS), DictTrie(trie_seqs, eos_id=EOS)
    common = dict(max_new_tokens=7, num_beams=num_beams, num_return_sequences=nrs, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=PAD, eos_token_id=EOS, **kwargs)
    torch.manual_seed(1)
    expected = model.generate(**inputs, prefix_allowed_tokens_fn=reference_fn(dict_trie, start, VOCAB), **common)
    torch.manual_seed(1)
    processor = fs.hf.TrieLogitsProcessor(trie, prompt_len=prompt_len, num_beams=num_beams, **MODES[mode])
    got = model.generate(**inputs, logits_processor=[processor], **common)
    return expected, got


def assert_same_generation(expected, got):
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if hasattr(expected, "sequences_scores"):
        torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, rtol=0, atol=0)


BEAMS = [(1, 1), (4, 2), (4, 4), (8, 3)]


@pytest.mark.parametrize("mode", ["new", "reuse_output"])
@pytest.mark.parametrize("prompt_len", [3, "auto"])
@pytest.mark.parametrize("num_beams,nrs", BEAMS)
@pytest.mark.parametrize("seed", range(2))
def test_gpt2_generate_matches_prefix_allowed_fn__seed__beams__mode(gpt2, seed, num_beams, nrs, prompt_len, mode):
    seqs = catalogue(seed)
    inputs = {"input_ids": torch.randint(3, VOCAB, (3, 3), generator=torch.Generator().manual_seed(seed))}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if mode == "new" and num_beams > 1:
        mode = "inplace"  # safe in beam search
    expected, got = generate_both(gpt2, inputs, 3, prompt_len, seqs, num_beams, nrs, mode)
    assert_same_generation(expected, got)
    dict_trie = DictTrie(seqs, eos_id=EOS)
    for row in expected.sequences[:, 3:].tolist():  # the constraint held: every output is an entry prefix
        gen = row[: row.index(EOS) + 1] if EOS in row else row
        assert dict_trie.node(gen) is not None


@pytest.mark.parametrize("mode", ["new", "reuse_output"])
def test_gpt2_sampling_with_several_return_sequences(gpt2, mode):
    inputs = {"input_ids": torch.randint(3, VOCAB, (2, 4), generator=torch.Generator().manual_seed(3))}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    expected, got = generate_both(gpt2, inputs, 4, "auto", catalogue(3), 1, 3, mode, do_sample=True, top_k=0)
    assert_same_generation(expected, got)


@pytest.mark.parametrize("mode", ["new", "reuse_output"])
@pytest.mark.parametrize("genre_style", [False, True])
@pytest.mark.parametrize("num_beams,nrs", BEAMS)
def test_bart_generate_matches_prefix_allowed_fn__beams__mode(bart, num_beams, nrs, genre_style, mode):
    seqs = catalogue(5)
    inputs = {"input_ids": torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if genre_style:  # entries start with decoder_start_token_id and the walk starts at column 0
        expected, got = generate_both(bart, inputs, 0, None, [[2] + s for s in seqs], num_beams, nrs, mode)
    else:  # "auto" takes the decoder_start column as the prompt
        expected, got = generate_both(bart, inputs, 1, "auto", seqs, num_beams, nrs, mode)
    assert_same_generation(expected, got)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_auto_processor_reused_on_its_own_output_matches_a_fresh_one(gpt2, num_beams):
    # The second prompt is the first call's output: one column wider than the first generation's
    # last input, and starting with its prompt, but with every row ended (greedy), or rows that
    # extend none of the last step's beams (hypotheses that finished before the last step).
    seqs = catalogue(9)
    trie = fs.Trie(seqs, eos_id=EOS)
    common = dict(max_new_tokens=7, num_beams=num_beams, pad_token_id=PAD, eos_token_id=EOS)
    reused = fs.hf.TrieLogitsProcessor(trie, prompt_len="auto", num_beams=num_beams)
    first = gpt2.generate(torch.randint(3, VOCAB, (3, 3), generator=torch.Generator().manual_seed(9)),
                          logits_processor=[reused], **common)
    assert (first[:, 3:] == EOS).any(dim=1).all()
    expected = gpt2.generate(first, logits_processor=[fs.hf.TrieLogitsProcessor(trie, "auto", num_beams)], **common)
    got = gpt2.generate(first, logits_processor=[reused], **common)
    assert torch.equal(got, expected)
    dict_trie = DictTrie(seqs, eos_id=EOS)
    for row in got[:, first.shape[1]:].tolist():
        assert dict_trie.node(row[: row.index(EOS) + 1] if EOS in row else row) is not None


@pytest.mark.parametrize("num_beams", [1, 4])
def test_auto_processor_read_by_a_stopping_criterion_and_left_at_one_beam(gpt2, num_beams):
    # nodes() from a stopping criterion is a read; and "auto" follows a beam search it was not told of.
    seqs = catalogue(10)
    trie = fs.Trie(seqs, eos_id=EOS)
    prompt = torch.randint(3, VOCAB, (2, 3), generator=torch.Generator().manual_seed(10))
    common = dict(max_new_tokens=7, num_beams=num_beams, num_return_sequences=num_beams, pad_token_id=PAD,
                  eos_token_id=EOS)
    expected = gpt2.generate(prompt, logits_processor=[fs.hf.TrieLogitsProcessor(trie, 3, num_beams)], **common)
    processor = fs.hf.TrieLogitsProcessor(trie, prompt_len="auto")  # num_beams left at 1
    read = []

    class ReadNodes(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            read.append(processor.nodes(input_ids))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    got = gpt2.generate(prompt, logits_processor=[processor],
                        stopping_criteria=transformers.StoppingCriteriaList([ReadNodes()]), **common)
    assert torch.equal(got, expected)
    assert len(read) > 1 and all((nodes >= 0).any() for nodes in read[:-1])
    dict_trie = DictTrie(seqs, eos_id=EOS)
    for row in got[:, 3:].tolist():
        assert dict_trie.node(row[: row.index(EOS) + 1] if EOS in row else row) is not None


@pytest.mark.parametrize("seqs", [[[5], [6]], [[5], [6, 7], [8, 9, 10]]])
@pytest.mark.parametrize("mode", ["new", "reuse_output"])
@pytest.mark.parametrize("num_beams,nrs", [(1, 1), (4, 2)])
def test_min_new_tokens_unsatisfiable_fallback_matches(gpt2, seqs, num_beams, nrs, mode):
    # min_new_tokens hides eos, so rows whose only continuation is eos fall back as transformers does.
    inputs = {"input_ids": torch.tensor([[3, 4, 11]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    expected, got = generate_both(gpt2, inputs, 3, "auto", seqs, num_beams, nrs, mode, min_new_tokens=3)
    assert_same_generation(expected, got)
