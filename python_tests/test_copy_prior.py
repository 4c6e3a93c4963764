"""fs.CopyPrior (seed 003) against a hand computation, in training and as a decoding hook."""

import numpy as np
import pytest
import torch

import pyfastseq as fs

V = 11


def hand_prior(prior, logits, sources, pad=None):
    """(y + s*chi + t) / 2 with chi built by a Python loop over each source."""
    out = torch.empty_like(logits)
    for b, source in enumerate(sources.tolist()):
        chi = torch.zeros(V)
        for token in source:
            if token != pad:
                chi[token] = 1.0
        out[b] = (logits[b] + prior.s.detach() * chi + prior.t.detach()) / 2
    return out


def trained_prior(pad_id=None):
    prior = fs.CopyPrior(V, pad_id=pad_id)
    with torch.no_grad():
        prior.s.copy_(torch.linspace(0.5, 3.0, V))
        prior.t.copy_(torch.linspace(-1.0, 1.0, V))
    return prior


def test_formula_matches_hand_computation():
    prior = trained_prior(pad_id=0)
    sources = torch.tensor([[3, 5, 3, 0, 0], [0, 10, 1, 2, 0], [4, 4, 4, 4, 4]])
    logits = torch.randn(3, V)
    torch.testing.assert_close(prior(logits, sources), hand_prior(prior, logits, sources, pad=0))
    # [B, T, V] (teacher forcing): one source per batch row, the same prior at every position
    seq_logits = torch.randn(3, 4, V)
    got = prior(seq_logits, sources)
    for step in range(4):
        torch.testing.assert_close(got[:, step], hand_prior(prior, seq_logits[:, step], sources, pad=0))


def test_source_mask_overrides_pad_and_duplicates_are_counted_once():
    prior = trained_prior(pad_id=0)
    sources = torch.tensor([[3, 0, 3, 7]])
    mask = torch.tensor([[True, True, False, False]])  # id 0 real here, 3 kept once, 7 masked out
    chi = prior.indicator(sources, mask)
    assert chi[0].nonzero().flatten().tolist() == [0, 3]
    assert fs.CopyPrior(V).indicator(sources)[0].nonzero().flatten().tolist() == [0, 3, 7]


def test_gradients_reach_s_and_t():
    prior = fs.CopyPrior(V)
    sources = torch.tensor([[1, 2], [2, 5]])
    logits = torch.randn(2, V, requires_grad=True)
    targets = torch.tensor([2, 7])
    loss = torch.nn.functional.cross_entropy(prior(logits, sources), targets)
    loss.backward()
    assert logits.grad is not None
    assert prior.s.grad.abs().sum() > 0 and prior.t.grad.abs().sum() > 0
    # s only gets gradient on ids that occur in a source: d/ds_v = chi_v * d/dy_v / 2
    assert prior.s.grad[[0, 3, 4, 6, 7, 8, 9, 10]].abs().sum() == 0
    # a few steps of training raise the target's probability
    opt = torch.optim.SGD(prior.parameters(), lr=1.0)
    before = loss.item()
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(prior(logits.detach(), sources), targets)
        loss.backward()
        opt.step()
    assert loss.item() < before


def test_logits_processor_renormalises_the_seeds_distribution():
    prior = trained_prior()
    sources = torch.tensor([[1, 2], [4, 9]])
    processor = prior.as_logits_processor(sources)
    logits = torch.randn(2 * 3, V)  # 2 sources x 3 beams, batch-major as generate() lays rows out
    rows = torch.arange(6) // 3
    expected = torch.log_softmax(prior(logits, sources[rows]), dim=-1)
    torch.testing.assert_close(processor(None, logits), expected.detach())
    # log-probabilities (beam search's input) give the same result: the per-row shift cancels
    torch.testing.assert_close(processor(None, torch.log_softmax(logits, -1)), expected.detach())


def test_logits_processor_inside_generate():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    prior = trained_prior()
    inputs = torch.tensor([[3, 4, 5], [6, 7, 8]])
    sources = torch.tensor([[2, 9, 10], [3, 3, 4]])
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, return_dict_in_generate=True,
                  output_scores=True, attention_mask=torch.ones_like(inputs), pad_token_id=0)
    got = model.generate(inputs, logits_processor=[prior.as_logits_processor(sources)], **kwargs)
    # the same prior applied to the model's own logits (rows 0-2 use source 0, rows 3-5 source 1)
    rows = torch.arange(6) // 3
    hook = model.lm_head.register_forward_hook(lambda m, args, out: prior(out, sources[rows]).detach())
    try:
        expected = model.generate(inputs, **kwargs)
    finally:
        hook.remove()
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(got.sequences_scores, expected.sequences_scores)


def test_step_fn_wrapper_follows_beam_idx():
    prior = trained_prior()
    sources = torch.tensor([[1, 2], [4, 9]])
    base = torch.randn(4, V)
    wrapped = prior.wrap_step_fn(lambda tokens, beam_idx: base.clone(), sources)
    chis = prior.prior(sources).detach()
    first = wrapped(torch.zeros(4, 0, dtype=torch.long), torch.arange(4))
    torch.testing.assert_close(first, (base + chis[[0, 0, 1, 1]]) / 2)
    # a reorder (rows 0 and 1 both continue row 1, rows 2 and 3 swap) keeps every row's source
    second = wrapped(torch.zeros(4, 1, dtype=torch.long), torch.tensor([1, 1, 3, 2]))
    torch.testing.assert_close(second, (base + chis[[0, 0, 1, 1]]) / 2)
    # a searcher that moves a row to another batch item's slot takes its source along
    third = wrapped(torch.zeros(4, 1, dtype=torch.long), torch.tensor([2, 0, 1, 3]))
    torch.testing.assert_close(third, (base + chis[[1, 0, 0, 1]]) / 2)


@pytest.mark.parametrize("beams", [(4, 2), (2, 4), (3, 3)])
def test_step_fn_wrapper_serves_search_after_search(beams):
    # Each search starts its rows over, batch-major, whatever the last one left.
    prior = trained_prior()
    sources = torch.tensor([[3], [5]])

    def step_fn(tokens, beam_idx):  # flat logits, then eos after one token
        logits = torch.zeros(len(beam_idx), V)
        logits[:, 0] = -100.0 if tokens.shape[1] == 0 else 100.0
        return logits

    wrapped = prior.wrap_step_fn(step_fn, sources)
    chis = prior.prior(sources).detach()
    expected = [[[int(chis[b, 1:].argmax()) + 1, 0]] for b in range(2)]  # each item copies its own source
    for num_beams in beams:
        assert fs.BeamSearch(0, num_beams=num_beams, max_length=3).search(wrapped, 2).sequences == expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        fs.CopyPrior(0)
    prior = fs.CopyPrior(V)
    with pytest.raises(ValueError, match="source_ids holds token id 11"):
        prior(torch.zeros(1, V), torch.tensor([[11]]))
    with pytest.raises(ValueError, match="source_ids"):
        prior(torch.zeros(1, V), torch.tensor([1, 2]))
    for dtype in (torch.float32, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=f"source_ids must hold integer token ids, got dtype {dtype}"):
            prior(torch.zeros(1, V), torch.ones(1, 1, dtype=dtype))
    with pytest.raises(ValueError, match="logits"):
        prior(torch.zeros(1, V + 1), torch.tensor([[1]]))
    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=f"logits must be a floating-point tensor, got dtype {dtype}"):
            prior(torch.zeros(1, V, dtype=dtype), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="rows"):
        prior(torch.zeros(2, V), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="source_mask"):
        prior.indicator(torch.tensor([[1, 2]]), torch.tensor([[True]]))
    # a masked position may hold any id (e.g. -100 labels)
    assert prior.indicator(torch.tensor([[-100, 3]]), torch.tensor([[False, True]]))[0, 3] == 1


def test_numpy_integers_for_vocab_size_and_pad_id():
    prior = fs.CopyPrior(np.int64(V), pad_id=np.int32(0))
    assert (prior.vocab_size, prior.pad_id) == (V, 0) and type(prior.vocab_size) is int
    torch.testing.assert_close(prior.indicator(torch.tensor([[0, 3]])), fs.CopyPrior(V, pad_id=0).indicator(
        torch.tensor([[0, 3]])))
    with pytest.raises(TypeError, match="pad_id must be an int or None, got float"):
        fs.CopyPrior(V, pad_id=0.0)


def test_vocab_size_too_large_for_token_ids_or_the_memory_cap():
    with pytest.raises(ValueError, match=r"vocab_size must be an int in \[1, 2\*\*31\]"):
        fs.CopyPrior(2**40)
    before = fs.get_memory_limit()
    fs.set_memory_limit(1000)
    try:
        with pytest.raises(MemoryError, match="CopyPrior's s and t"):
            fs.CopyPrior(1000)
    finally:
        fs.set_memory_limit(before)


def test_decoding_needs_a_source():
    prior = fs.CopyPrior(V)
    none = torch.zeros(0, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="source_ids must hold at least one source"):
        prior.as_logits_processor(none)
    with pytest.raises(ValueError, match="source_ids must hold at least one source"):
        prior.wrap_step_fn(lambda tokens, beam_idx: torch.zeros(2, V), none)


def test_step_fn_wrapper_rejects_a_bad_beam_idx():
    prior = trained_prior()
    sources = torch.tensor([[1, 2], [4, 9]])
    wrapped = prior.wrap_step_fn(lambda tokens, beam_idx: torch.zeros(4, V), sources)
    wrapped(torch.zeros(4, 0, dtype=torch.long), torch.arange(4))
    tokens = torch.zeros(4, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"beam_idx must index the previous call's 4 rows, got values in \[0, 4\]"):
        wrapped(tokens, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"beam_idx .* got values in \[-1, 2\]"):
        wrapped(tokens, torch.tensor([-1, 0, 1, 2]))
    for dtype in (torch.float32, torch.complex64):
        with pytest.raises(TypeError, match=f"beam_idx must hold integer row indices, got dtype {dtype}"):
            wrapped(tokens, torch.arange(4).to(dtype))
    with pytest.raises(ValueError, match="beam_idx must be a 1-D tensor"):
        wrapped(tokens, torch.arange(4).view(2, 2))
    with pytest.raises(ValueError, match=r"beam_idx must hold one entry per logits row \(4\), got 2"):
        wrapped(tokens, torch.arange(2))
    with pytest.raises(ValueError, match="beam_idx is on the meta device"):
        wrapped(tokens, torch.arange(4, device="meta"))
    # the rejected calls left the rows' sources as they were
    torch.testing.assert_close(wrapped(tokens, torch.tensor([2, 3, 0, 1])), prior.prior(sources).detach()[[1, 1, 0, 0]] / 2)


def test_processor_and_wrapper_name_what_is_not_a_tensor_or_a_step_fn():
    prior = fs.CopyPrior(V)
    processor = prior.as_logits_processor(torch.tensor([[1]]))
    for scores in (None, [[0.0] * V], np.zeros((1, V), dtype=np.float32)):
        with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
            processor(torch.zeros(1, 1, dtype=torch.long), scores)
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        processor(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, V, dtype=torch.long))
    with pytest.raises(TypeError, match="step_fn must be callable .* got NoneType"):
        prior.wrap_step_fn(None, torch.tensor([[1]]))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        prior.wrap_step_fn(lambda tokens, beam_idx: [[0.0] * V], torch.tensor([[1]]))(
            torch.zeros(1, 0, dtype=torch.long), torch.arange(1))


def test_indicator_rejects_meta_tensors():
    prior = fs.CopyPrior(V)
    with pytest.raises(ValueError, match="source_ids is on the meta device"):
        prior.indicator(torch.zeros(1, 2, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="source_mask is on the meta device"):
        prior.indicator(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool, device="meta"))


def test_rejects_meta_logits_and_sparse_tensors():
    prior = fs.CopyPrior(V)
    with pytest.raises(ValueError, match="logits is on the meta device"):
        prior(torch.zeros(1, V, device="meta"), torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="logits must be a dense"):
        prior(torch.zeros(1, V).to_sparse(), torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="source_ids must be a dense"):
        prior.indicator(torch.tensor([[1, 2]]).to_sparse())
    with pytest.raises(TypeError, match="source_mask must be a dense"):
        prior.indicator(torch.tensor([[1, 2]]), torch.tensor([[True, False]]).to_sparse())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.uint64])
def test_any_integer_dtype_and_a_pad_id_beyond_it(dtype):
    # A pad_id the dtype cannot hold pads nothing (it must not wrap onto a real id such as 0).
    sources = torch.tensor([[0, 5, 3], [7, 0, 0]])
    for pad_id in (None, 0, 2**32, -(2**63)):
        prior = trained_prior(pad_id=pad_id)
        logits = torch.randn(2, V)
        pad = pad_id if pad_id == 0 else None
        torch.testing.assert_close(prior(logits, sources.to(dtype)), hand_prior(prior, logits, sources, pad=pad))


def test_pad_id_beyond_int64_and_source_ids_beyond_the_vocabulary():
    with pytest.raises(ValueError, match="pad_id must lie in the int64 range"):
        fs.CopyPrior(V, pad_id=2**70)
    with pytest.raises(ValueError, match=f"source_ids holds token id {2**64 - 1} outside"):
        fs.CopyPrior(V).indicator(torch.tensor([[2**64 - 1]], dtype=torch.uint64))


def test_processor_keeps_float64_scores_in_float64():
    prior = trained_prior()
    sources = torch.tensor([[1, 2]])
    scores = torch.randn(1, V, dtype=torch.float64) * 30
    got = prior.as_logits_processor(sources)(torch.zeros(1, 1, dtype=torch.long), scores)
    expected = torch.log_softmax((scores + prior.prior(sources).detach().double()) / 2, dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
