"""fs.UniLM and the transformers attention hook: training against a dense-mask BERT, incremental decoding
against full re-computation."""

import copy
import os
import sys

import pytest
import torch

# The Triton interpreter must be chosen before Triton is first imported (see test_attention.py).
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForMaskedLM, BertModel  # noqa: E402

import pyfastseq as fs  # noqa: E402
from pyfastseq._hf_cache import cache_kwarg  # noqa: E402
from pyfastseq.attention import backend_for, hf  # noqa: E402

VOCAB = 40


def tiny_config(**overrides):
    cfg = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
               max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(overrides)
    return BertConfig(**cfg)


PAIRS = [([2, 5, 6, 7, 3], [8, 9, 10, 3]), ([2, 11, 3], [12, 13, 14, 15, 16, 3]), ([2, 17, 18, 19, 20, 21, 22, 3], [23, 3])]


def dense_mask_loss(model, enc):
    """The same objective as UniLM.loss, through stock eager attention with a dense additive mask."""
    L = enc["input_ids"].shape[1]
    visible = fs.unilm_mask(enc["prefix_lens"], enc["seq_lens"], L)[:, None]  # [B, 1, L, L]
    bias = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    hidden = model(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"], attention_mask=bias).last_hidden_state
    logits = hidden @ model.get_input_embeddings().weight.T
    loss_terms = []
    for b in range(L and len(enc["input_ids"])):
        s, n = int(enc["prefix_lens"][b]), int(enc["seq_lens"][b])
        for p in range(s, n):  # target token p predicted at p - 1
            loss_terms.append(torch.nn.functional.cross_entropy(logits[b, p - 1], enc["input_ids"][b, p]))
    return torch.stack(loss_terms).mean()


def test_training_matches_dense_mask_bert():
    torch.manual_seed(0)
    base = BertModel(tiny_config(), add_pooling_layer=False)
    dense = copy.deepcopy(base)
    dense.set_attn_implementation("eager")
    unilm = fs.UniLM(base)
    opt_a = torch.optim.Adam(unilm.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(dense.parameters(), lr=1e-2)
    enc = unilm.batch(PAIRS)
    for _ in range(3):
        loss_a = unilm.loss(PAIRS)
        loss_b = dense_mask_loss(dense, enc)
        torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
        for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), b in zip(base.named_parameters(), dense.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_output_projection_tied_or_head(monkeypatch):
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")  # about the projection, not the kernel
    torch.manual_seed(1)
    bare = fs.UniLM(BertModel(tiny_config()).eval())
    enc = bare.batch(PAIRS)
    hidden = bare.model(**enc).last_hidden_state
    torch.testing.assert_close(bare(**enc), hidden @ bare.model.embeddings.word_embeddings.weight.T)
    assert not bare.has_head

    mlm = fs.UniLM(BertForMaskedLM(tiny_config()).eval())
    assert mlm.has_head
    torch.testing.assert_close(mlm(**enc), mlm.model(**enc).logits)


def reference_next_logits(unilm, row_sources, histories):
    """Logits for each row's next token by re-running the whole (source, target so far) sequence,
    through the dense-mask fallback."""
    enc = unilm.batch(list(zip(row_sources, histories)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
        logits = unilm(**enc)
    return logits[torch.arange(len(histories)), enc["seq_lens"] - 1]


def roberta_config(**overrides):
    """RoBERTa numbers positions from its padding index + 1; UniLM needs its second segment embedding."""
    return transformers.RobertaConfig(**{**tiny_config().to_dict(), "type_vocab_size": 2, "pad_token_id": 1,
                                         **overrides})


MODELS = {
    "BertModel": lambda: BertModel(tiny_config()),
    "BertForMaskedLM": lambda: BertForMaskedLM(tiny_config()),
    "BertForPreTraining": lambda: transformers.BertForPreTraining(tiny_config()),
    "RobertaForMaskedLM": lambda: transformers.RobertaForMaskedLM(roberta_config()),
}


@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
def test_step_fn_matches_full_recomputation(make_model):
    torch.manual_seed(2)
    unilm = fs.UniLM(make_model().eval())
    # Token 1 is RoBERTa's padding id: in a source (as a tokenizer's padding=True leaves it) and
    # drawn as a target token, it must take a position like any other.
    sources, num_beams = [[2, 5, 6, 3], [2, 7, 8, 9, 10, 11, 3, 1], [2, 1, 3]], 3
    N = len(sources) * num_beams
    step = unilm.step_fn(sources, num_beams)
    gen = torch.Generator().manual_seed(0)
    row_sources, histories = [sources[r // num_beams] for r in range(N)], [[] for _ in range(N)]
    logits = step(torch.zeros(N, 0, dtype=torch.long), torch.arange(N))
    for _ in range(4):
        assert logits.shape == (N, VOCAB)
        torch.testing.assert_close(logits, reference_next_logits(unilm, row_sources, histories), atol=1e-5, rtol=1e-5)
        # Each row continues a random row, of any batch item, with a random token.
        beam_idx = torch.randint(N, (N,), generator=gen)
        tokens = torch.randint(1, VOCAB, (N, 1), generator=gen)
        row_sources = [row_sources[int(b)] for b in beam_idx]
        histories = [histories[int(beam_idx[r])] + [int(tokens[r])] for r in range(N)]
        logits = step(tokens, beam_idx)
    # A second search on the same step function starts its rows over, each on its own source.
    row_sources = [sources[r // num_beams] for r in range(N)]
    step(torch.zeros(N, 0, dtype=torch.long), torch.arange(N))
    tokens = torch.randint(1, VOCAB, (N, 1), generator=gen)
    torch.testing.assert_close(step(tokens, torch.arange(N)),
                               reference_next_logits(unilm, row_sources, tokens.tolist()), atol=1e-5, rtol=1e-5)


def test_greedy_decode_equals_full_recomputation():
    torch.manual_seed(3)
    unilm = fs.UniLM(BertModel(tiny_config()).eval())
    sources = [[2, 5, 6, 3], [2, 7, 8, 9, 3]]
    step = unilm.step_fn(sources)
    logits = step(torch.zeros(2, 0, dtype=torch.long), torch.arange(2))
    incremental = []
    for _ in range(5):
        tokens = logits.argmax(-1, keepdim=True)
        incremental.append(tokens)
        logits = step(tokens, torch.arange(2))
    incremental = torch.cat(incremental, 1).tolist()

    histories = [[], []]
    with torch.no_grad():
        for _ in range(5):
            nxt = reference_next_logits(unilm, sources, histories).argmax(-1)
            histories = [h + [int(t)] for h, t in zip(histories, nxt)]
    assert incremental == histories


def test_lengths_from_segments():
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    prefix, seq = hf.lengths_from_segments(token_type_ids, attention_mask)
    assert prefix.tolist() == [3, 1] and seq.tolist() == [5, 6]


@pytest.mark.parametrize("args, error, match", [
    (([[0, 1]],), TypeError, "token_type_ids must be a torch.Tensor"),
    ((torch.tensor([[0.0, 1.0]]),), TypeError, "token_type_ids must hold integers"),
    ((torch.tensor([0, 1]),), ValueError, "token_type_ids must be 2-D"),
    ((torch.tensor([[0, 2]]),), ValueError, "token_type_ids must hold 0 .source. and 1 .target. only"),
    ((torch.tensor([[0, 1]]), [[1, 1]]), TypeError, "attention_mask must be a torch.Tensor"),
    ((torch.tensor([[0, 1]]), torch.tensor([[1, 2]])), ValueError, "attention_mask must hold 0"),
    ((torch.tensor([[0, 1]]), torch.tensor([[1, 1, 0]])), ValueError, "attention_mask must have token_type_ids' shape"),
    ((torch.tensor([[0, 1, 0]]),), ValueError, "row 0 is not laid out source"),
    ((torch.tensor([[0, 0], [1, 0]]),), ValueError, "row 1 is not laid out source"),
    ((torch.tensor([[0, 1, 1]]), torch.tensor([[1, 0, 1]])), ValueError, "row 0 is not laid out source"),
])
def test_lengths_from_segments_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        hf.lengths_from_segments(*args)


def test_padding_attention_mask_stands_in_for_seq_lens():
    torch.manual_seed(5)
    unilm = fs.UniLM(BertModel(tiny_config()).eval())
    enc = unilm.batch(PAIRS)
    L = enc["input_ids"].shape[1]
    real = torch.arange(L)[None] < enc["seq_lens"][:, None]
    with torch.no_grad():
        expected = unilm(**enc)
        got = unilm(**{**enc, "seq_lens": None}, attention_mask=real.long())
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        with pytest.raises(ValueError, match="pads a row other than at its end"):
            unilm(**{**enc, "seq_lens": None}, attention_mask=real.flip(-1).long())


def test_cached_chunk_honours_a_padding_attention_mask():
    # Sources of different lengths share one padded cache; a 2-D mask hides the shorter one's padding.
    from transformers import DynamicCache

    torch.manual_seed(6)
    unilm = fs.UniLM(BertModel(tiny_config()).eval())
    sources, targets = [[2, 5, 6, 7, 3], [2, 11, 3]], [[8, 9, 10], [12, 13, 14]]
    S = max(map(len, sources))
    cache = DynamicCache(config=unilm.model.config)
    with torch.no_grad():
        unilm(**unilm.batch([(s, []) for s in sources]), **{cache_kwarg(unilm.model): cache})
        keys = torch.arange(S + 3)
        real = torch.stack([(keys < len(s)) | (keys >= S) for s in sources]).long()
        chunk = unilm.logits(unilm.model(
            input_ids=torch.tensor(targets), token_type_ids=torch.ones(2, 3, dtype=torch.long),
            position_ids=torch.stack([torch.arange(len(s), len(s) + 3) for s in sources]),
            attention_mask=real, **{cache_kwarg(unilm.model): cache}))
        for b, (source, target) in enumerate(zip(sources, targets)):
            full = unilm(**unilm.batch([(source, target)]))[0, len(source):]
            torch.testing.assert_close(chunk[b, :-1], full[:-1], atol=1e-5, rtol=1e-5)


def test_bad_input():
    unilm = fs.UniLM(BertModel(tiny_config()))
    with pytest.raises(ValueError, match="needs prefix_lens"):
        unilm.model(input_ids=torch.ones(1, 4, dtype=torch.long))
    step = unilm.step_fn([[2, 3]], num_beams=2)
    with pytest.raises(ValueError, match="first call"):
        step(torch.ones(2, 1, dtype=torch.long), torch.arange(2))
    with pytest.raises(ValueError, match="tokens must be"):
        step(torch.ones(3, 0, dtype=torch.long), torch.arange(3))


def _dropout_model():
    torch.manual_seed(0)
    model = BertModel(tiny_config(attention_probs_dropout_prob=0.3), add_pooling_layer=False)
    return model, fs.UniLM(model).train()


def _loss_and_grads(model, unilm, rng_seed):
    model.zero_grad()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        loss = unilm.loss(PAIRS)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.skipif(backend_for(torch.device("cpu"), torch.float32) != "triton",
                    reason="Triton interpreter not active (needs triton and TRITON_INTERPRET=1)")
def test_attention_dropout_kernels_drop_what_the_reference_drops(monkeypatch):
    # A stock config's attention-probability dropout in training: under one RNG state the kernels
    # (in the interpreter) and the PyTorch reference drop the same entries: same loss and gradients.
    model, unilm = _dropout_model()
    kernels = _loss_and_grads(model, unilm, 1)
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    for a, b in zip(kernels, _loss_and_grads(model, unilm, 1)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_attention_dropout_only_in_training():
    # Each RNG state drops other entries in training; eval mode drops nothing.
    model, unilm = _dropout_model()
    assert not torch.allclose(_loss_and_grads(model, unilm, 1)[0], _loss_and_grads(model, unilm, 2)[0])
    undropped = BertModel(tiny_config(), add_pooling_layer=False)
    undropped.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(unilm.eval().loss(PAIRS), fs.UniLM(undropped).eval().loss(PAIRS))


@pytest.mark.parametrize("pairs, exc, match", [
    ([], ValueError, r"pairs must hold at least one \(source, target\) pair"),
    (None, TypeError, r"pairs must be a sequence of \(source, target\) pairs, got NoneType"),
    (5, TypeError, "pairs must be a sequence"),
    ("ab", TypeError, "pairs must be a sequence"),
    ([([2, 3], [1.7])], TypeError, r"pairs\[0\]\[1\] must hold integer token ids, got dtype float"),
    ([([2, 3], [4]), ([True], [False])], TypeError, r"pairs\[1\]\[0\] must hold integer token ids, got dtype bool"),
    ([(["a"], [4])], TypeError, r"pairs\[0\]\[0\] must hold integer token ids"),
    ([([2, -1], [4])], ValueError, r"pairs\[0\]\[0\] holds token id -1"),
    ([([2, 3], [4, VOCAB])], ValueError, rf"pairs\[0\]\[1\] holds token id {VOCAB} outside \[0, {VOCAB}\)"),
    ([([], [1, 2])], ValueError, r"pairs\[0\] has an empty source"),
    ([7], TypeError, r"pairs\[0\] must be a \(source, target\) pair"),
    ([([2, 3], [4], [5])], ValueError, r"pairs\[0\] must be a \(source, target\) pair"),
    ([([2] * 40, [4] * 25)], ValueError, r"pairs\[0\] has 65 tokens, more than the model's max_position_embeddings"),
])
def test_batch_bad_input(pairs, exc, match):
    unilm = fs.UniLM(BertModel(tiny_config()))
    with pytest.raises(exc, match=match):
        unilm.batch(pairs)
    with pytest.raises(exc, match=match):
        unilm.loss(pairs)


def test_batch_at_max_positions():
    unilm = fs.UniLM(BertModel(tiny_config()))
    assert unilm.batch([([2] * 40, [4] * 24)])["input_ids"].shape == (1, 64)


def test_loss_without_targets():
    unilm = fs.UniLM(BertModel(tiny_config()))
    with pytest.raises(ValueError, match="pairs hold no target tokens"):
        unilm.loss([([2, 3], []), ([4, 3], [])])
    assert torch.isfinite(unilm.loss([([2, 3], []), ([4, 3], [5])]))  # one target suffices


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(num_beams=1.5), TypeError, "num_beams must be an int, got float"),
    (dict(num_beams="2"), TypeError, "num_beams must be an int, got str"),
    (dict(num_beams=True), TypeError, "num_beams must be an int, got bool"),
    (dict(num_beams=0), ValueError, r"num_beams must lie in \[1, 2\*\*31 - 1\], got 0"),
    (dict(num_beams=2**31), ValueError, r"num_beams must lie in \[1, 2\*\*31 - 1\], got 2147483648"),
    (dict(num_beams=2**63), ValueError, r"num_beams must lie in \[1, 2\*\*31 - 1\]"),
    (dict(sources=None), TypeError, "sources must be a sequence of token sequences, got NoneType"),
    (dict(sources=[]), ValueError, "sources must hold at least one token sequence"),
    (dict(sources=[[2, 3], [2, VOCAB]]), ValueError, rf"sources\[1\] holds token id {VOCAB}"),
    (dict(sources=[[2, 3], [0.5]]), TypeError, r"sources\[1\] must hold integer token ids"),
    (dict(sources=[[2, 3], []]), ValueError, r"sources\[1\] has an empty source"),
    (dict(sources=[[2] * 65]), ValueError, r"sources\[0\] has 65 tokens, more than the model's max_position"),
])
def test_step_fn_bad_arguments(kwargs, exc, match):
    unilm = fs.UniLM(BertModel(tiny_config()))
    with pytest.raises(exc, match=match):
        unilm.step_fn(**{"sources": [[2, 3]], **kwargs})


@pytest.mark.parametrize("tokens, beam_idx, exc, match", [
    (torch.tensor([[VOCAB], [1]]), torch.arange(2), ValueError, rf"tokens must lie in \[0, {VOCAB}\), got {VOCAB}"),
    (torch.tensor([[-1], [1]]), torch.arange(2), ValueError, rf"tokens must lie in \[0, {VOCAB}\), got -1"),
    (torch.ones(2, 1), torch.arange(2), TypeError, "tokens must hold integers"),
    ([[1], [1]], torch.arange(2), TypeError, "tokens must be a torch.Tensor"),
    (torch.ones(2, 1, dtype=torch.long), torch.tensor([0, 2]), ValueError, r"beam_idx must lie in \[0, 2\), got 2"),
    (torch.ones(2, 1, dtype=torch.long), torch.tensor([0, -1]), ValueError, r"beam_idx must lie in \[0, 2\), got -1"),
    (torch.ones(2, 1, dtype=torch.long), torch.tensor([0.0, 1.0]), TypeError, "beam_idx must hold integers"),
    (torch.ones(2, 1, dtype=torch.long), torch.arange(2)[:, None], ValueError, r"beam_idx must have shape \(2,\)"),
    (torch.ones(2, 1, dtype=torch.long), None, TypeError, "beam_idx must be a torch.Tensor"),
    (torch.ones(2, 1, dtype=torch.long, device="meta"), torch.arange(2), ValueError, "tokens is on the meta device"),
    (torch.ones(2, 1, dtype=torch.long), torch.arange(2, device="meta"), ValueError, "beam_idx is on the meta device"),
])
def test_step_bad_call(tokens, beam_idx, exc, match):
    unilm = fs.UniLM(BertModel(tiny_config()).eval())
    step = unilm.step_fn([[2, 3]], num_beams=2)
    step(torch.zeros(2, 0, dtype=torch.long), torch.arange(2))
    with pytest.raises(exc, match=match):
        step(tokens, beam_idx)
    assert step(torch.ones(2, 1, dtype=torch.long), torch.arange(2)).shape == (2, VOCAB)  # still usable


@pytest.mark.parametrize("index, exc, match", [
    ([0, 1], TypeError, "index must be a torch.Tensor"),
    (torch.tensor([0.0, 1.0]), TypeError, "index must hold integers"),
    (torch.tensor([0, 2]), ValueError, r"index must lie in \[0, 2\), got 2"),
    (torch.tensor([-1]), ValueError, r"index must lie in \[0, 2\), got -1"),
    (torch.tensor([[0, 1]]), ValueError, "index must be 1-D"),
    (torch.tensor([0, 1], device="meta"), ValueError, "index is on the meta device"),
])
def test_fork_bad_index(index, exc, match):
    step = fs.UniLM(BertModel(tiny_config()).eval()).step_fn([[2, 3]], num_beams=2)
    step(torch.zeros(2, 0, dtype=torch.long), torch.arange(2))
    with pytest.raises(exc, match=match):
        step.fork(index)
    assert step.fork(torch.tensor([1, 0, 1]))(torch.ones(3, 1, dtype=torch.long), torch.arange(3)).shape == (3, VOCAB)


def test_step_past_max_positions():
    unilm = fs.UniLM(BertModel(tiny_config(max_position_embeddings=8)).eval())
    step = unilm.step_fn([[2, 5, 6, 7, 8, 3], [2, 3]])
    step(torch.zeros(2, 0, dtype=torch.long), torch.arange(2))
    for _ in range(2):  # positions 6 and 7 of the longer row
        step(torch.ones(2, 1, dtype=torch.long), torch.arange(2))
    with pytest.raises(ValueError, match=r"tokens would take position 8, past the model's max_position_embeddings"):
        step(torch.ones(2, 1, dtype=torch.long), torch.arange(2))
    # A fork that keeps only the shorter row still has room.
    fork = step.fork(torch.tensor([1, 1]))
    assert fork(torch.ones(2, 1, dtype=torch.long), torch.arange(2)).shape == (2, VOCAB)


def test_roberta_positions_past_the_padding_index():
    # 10 position embeddings, the first two RoBERTa's padding: 8 tokens a row, as in training.
    unilm = fs.UniLM(transformers.RobertaModel(roberta_config(max_position_embeddings=10)).eval())
    assert unilm.batch([([2] * 5, [4] * 3)])["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match=r"has 9 tokens, more than the model's max_position_embeddings allows \(8\)"):
        unilm.batch([([2] * 5, [4] * 4)])
    step = unilm.step_fn([[2, 5, 6, 7, 3]])
    step(torch.zeros(1, 0, dtype=torch.long), torch.arange(1))
    for _ in range(3):
        step(torch.ones(1, 1, dtype=torch.long), torch.arange(1))
    with pytest.raises(ValueError, match=r"tokens would take position 10, past the model's max_position_embeddings \(10\)"):
        step(torch.ones(1, 1, dtype=torch.long), torch.arange(1))


@pytest.mark.parametrize("make_model, match", [
    (lambda: transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=1,
                                                                         n_heads=2, hidden_dim=64)),
     "UniLM needs a model that takes token_type_ids .* DistilBertModel does not"),
    (lambda: transformers.RobertaModel(roberta_config(type_vocab_size=1)),
     "UniLM needs two segment embeddings .* config.type_vocab_size is 1"),
    (lambda: transformers.AlbertModel(transformers.AlbertConfig(**{**tiny_config().to_dict(), "embedding_size": 32})),
     "AlbertModel has no LM head, and its hidden states .64 wide. cannot be projected onto its 32-wide embeddings"),
    # Its attention ignores attn_implementation: left to it, targets would see the tokens after them.
    (lambda: transformers.MegatronBertModel(transformers.MegatronBertConfig(**tiny_config().to_dict())),
     "MegatronBertModel does not take pluggable attention implementations .its attention stays 'eager'."),
], ids=["no_segments", "one_segment", "narrow_embeddings", "own_attention"])
def test_models_unilm_cannot_run(make_model, match):
    with pytest.raises(ValueError, match=match):
        fs.UniLM(make_model())


def test_model_without_a_kv_cache_trains_but_does_not_decode():
    unilm = fs.UniLM(transformers.AlbertModel(transformers.AlbertConfig(**{**tiny_config().to_dict(),
                                                                           "embedding_size": 64})))
    assert torch.isfinite(unilm.loss(PAIRS))
    step = unilm.step_fn([[2, 5, 6, 3]])
    with pytest.raises(ValueError, match="AlbertModel keeps no KV cache: UniLM can train it, but not decode it"):
        step(torch.zeros(1, 0, dtype=torch.long), torch.arange(1))


def test_not_a_model_or_not_a_language_model():
    for model in (None, torch.nn.Linear(2, 2), "bert-base-uncased"):
        with pytest.raises(TypeError, match="model must be a transformers model"):
            fs.UniLM(model)
    with pytest.raises(ValueError, match="BertForSequenceClassification has a head other than an LM head"):
        fs.UniLM(transformers.BertForSequenceClassification(tiny_config()))


@pytest.mark.parametrize("pad_id", [-1, VOCAB, "0", True, 1.0])
def test_bad_pad_id(pad_id):
    with pytest.raises(ValueError, match=rf"pad_id must be a token id in \[0, {VOCAB}\), got {pad_id!r}"):
        fs.UniLM(BertModel(tiny_config()), pad_id=pad_id)


def test_cached_chunk_of_target_tokens_is_causal():
    # Several new target tokens at once against a cached source: the hook's Lq < Lk path.
    from transformers import DynamicCache

    torch.manual_seed(4)
    unilm = fs.UniLM(BertModel(tiny_config()).eval())
    source, target = [2, 5, 6, 7, 3], [8, 9, 10]
    full = unilm(**unilm.batch([(source, target)]))[0, len(source) - 1:-1]
    cache = DynamicCache(config=unilm.model.config)
    with torch.no_grad():
        unilm(**unilm.batch([(source, [])]), **{cache_kwarg(unilm.model): cache})
        chunk = unilm.logits(unilm.model(
            input_ids=torch.tensor([target]), token_type_ids=torch.ones(1, 3, dtype=torch.long),
            position_ids=torch.arange(len(source), len(source) + 3)[None],
            attention_mask=torch.ones(1, 1, 3, len(source) + 3, dtype=torch.bool), **{cache_kwarg(unilm.model): cache}))
    torch.testing.assert_close(chunk[0, :-1], full[1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unilm(**unilm.batch([(source, [])]))[0, -1], full[0], atol=1e-5, rtol=1e-5)


def test_roberta_loss_and_forward_number_positions_alike_with_padding_ids_inside():
    # RoBERTa left to itself skips its padding id (1) when numbering positions; a pair may hold it.
    torch.manual_seed(4)
    unilm = fs.UniLM(transformers.RobertaForMaskedLM(roberta_config()).eval())
    pairs = [([0, 5, 6, 2, 1, 1], [7, 1, 8, 2]), ([0, 9, 2], [1, 10, 2])]
    enc = unilm.batch(pairs)
    with torch.no_grad():
        logits = unilm(**enc)
        want = torch.cat([logits[b, len(s) - 1: len(s) + len(t) - 1] for b, (s, t) in enumerate(pairs)])
        labels = torch.tensor([tok for _, t in pairs for tok in t])
        torch.testing.assert_close(unilm.loss(pairs), torch.nn.functional.cross_entropy(want, labels))
        step = unilm.step_fn([s for s, _ in pairs])
        got = [step(torch.zeros(2, 0, dtype=torch.long), torch.arange(2))]
        for i in range(2):
            got.append(step(torch.tensor([[pairs[0][1][i]], [pairs[1][1][i]]]), torch.arange(2)))
    for b, (s, _) in enumerate(pairs):
        torch.testing.assert_close(torch.stack([g[b] for g in got]), logits[b, len(s) - 1: len(s) + 2],
                                   atol=1e-5, rtol=1e-5)
