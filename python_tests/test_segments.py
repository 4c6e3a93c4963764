"""SegmentDecoder (seed 000): sample the answer, beam-search the question over the same KV cache.

The second segment must be exactly what a separate beam search decodes after the sampled answer:
the reference starts a fresh step function on the prompt alone, feeds it the answer one token per
call (the decode's own arithmetic), then runs the searcher. Exactness also needs every matrix
product to give a row the same bits whatever the batch around it: the CPU GEMM does so
single-threaded from 4 rows up (fewer rows take another kernel), so these tests pin torch to one
thread and keep every forward at 4 rows or more (4 beams, 4 samples). The UniLM step's source
encoding is the exception (see its test).
"""

import os
import sys

import numpy as np
import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the UniLM kernels on CPU (see test_attention.py)

transformers = pytest.importorskip("transformers")

import pyfastseq as fs  # noqa: E402
from pyfastseq import _generate  # noqa: E402
from pyfastseq.segments import fork_step  # noqa: E402

pytestmark = pytest.mark.native

VOCAB, SEP, K, SAMPLES = 40, 3, 4, 4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Forced:
    """Step function that feeds ``forced`` tokens to every row right after the prompt."""

    def __init__(self, step, forced):
        self.step, self.forced = step, forced

    def __call__(self, tokens, beam_idx):
        logits = self.step(tokens, beam_idx)
        if tokens.shape[1] == 0:
            for t in self.forced:
                logits = self.step(torch.full((len(beam_idx), 1), t), torch.arange(len(beam_idx)))
        return logits


def searchers():
    questions = fs.Trie([[7, 8, 9, SEP], [7, 10, SEP], [11, SEP], [12, 13, 14, 15, SEP], [7, 8, SEP]], eos_id=SEP)
    return [fs.BeamSearch(SEP, num_beams=K, max_length=6, num_return_sequences=2, output_token_scores=True),
            fs.TrieBeamSearch(questions, num_beams=K, max_length=6)]


def decoder(searcher):
    return fs.SegmentDecoder(fs.Sampler(top_k=12, top_p=0.95, seed=5, eos_id=SEP, max_length=7), searcher)


def assert_second_segments(out, searcher, fresh_step, score_rel=0.0):
    """Every sample's second segment against a separate search after its answer (scores to within
    ``score_rel`` where the model itself does not give a row the same bits in another batch)."""
    for b, answers in enumerate(out.first.sequences):
        assert len(answers) == SAMPLES
        for i, answer in enumerate(answers):
            assert_second_segment(out, b, i, searcher.search(Forced(fresh_step(b), answer), 1), score_rel)
    if not searcher.output_token_scores:
        assert out.second_token_scores is None


def assert_second_segment(out, b, i, ref, score_rel=0.0):
    """Sample ``i`` of item ``b`` against ``ref``, the separate search after its answer."""
    assert out.second[b][i] == ref.sequences[0]
    assert out.second_scores[b][i] == pytest.approx(ref.scores[0], rel=score_rel, abs=0)
    assert out.second_finished[b][i] == ref.finished[0]
    assert out.sequences[b][i] == out.first.sequences[b][i] + ref.sequences[0][0]
    if ref.token_scores is not None:
        assert len(out.second_token_scores[b][i]) == len(ref.token_scores[0])
        for got, want in zip(out.second_token_scores[b][i], ref.token_scores[0]):
            assert got == pytest.approx(want, rel=score_rel, abs=0)


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_layer=2, n_embd=32, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("searcher", searchers(), ids=["BeamSearch", "TrieBeamSearch"])
def test_gpt2_second_segment_equals_separate_search(gpt2, searcher):
    prompts = torch.tensor([[5, 6, 7, 8, SEP], [9, 10, 11, 12, SEP]])
    prefills = []
    hook = gpt2.register_forward_pre_hook(lambda m, args, kw: prefills.append(kw["input_ids"].shape[1] > 1),
                                          with_kwargs=True)
    try:
        out = decoder(searcher).generate(gpt2, prompts, num_samples=SAMPLES)
    finally:
        hook.remove()
    assert sum(prefills) == 1  # the prompt is encoded once; everything after feeds one token per row
    assert any(a[-1] == SEP for item in out.first.sequences for a in item)
    with torch.no_grad():
        assert_second_segments(out, searcher,
                               lambda b: _generate.model_step_fn(gpt2, prompts[b:b + 1], None, K, {}))
        # From scratch with the answer inside the prompt (encoded in one pass): same tokens.
        for b, answers in enumerate(out.first.sequences):
            for i, answer in enumerate(answers):
                ref = searcher.generate(gpt2, torch.cat([prompts[b:b + 1], torch.tensor([answer])], 1))
                assert out.second[b][i] == ref.sequences[0]
                np.testing.assert_allclose(out.second_scores[b][i], ref.scores[0], rtol=1e-5)


def test_unilm_second_segment_equals_separate_search():
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    unilm = fs.UniLM(transformers.BertModel(config).eval())
    sources = [[2, 5, 6, 7, SEP], [2, 9, 10, 11, SEP]]
    for searcher in searchers():
        out = decoder(searcher).search(unilm.step_fn(sources, num_beams=SAMPLES), len(sources), SAMPLES)
        # The UniLM step encodes all sources in one forward (B rows of the source length), the
        # reference one source: torch's CPU GEMM then differs in the last bit of some logits (3e-8
        # here), so the scores are compared to float rounding; the tokens must still be the same.
        assert_second_segments(out, searcher, lambda b: unilm.step_fn(sources[b:b + 1], num_beams=K), score_rel=1e-6)


def test_encoder_decoder_second_segment_equals_separate_search():
    torch.manual_seed(2)
    config = transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=64, decoder_start_token_id=2,
                                     pad_token_id=1, bos_token_id=0, eos_token_id=SEP, forced_eos_token_id=None)
    model = transformers.BartForConditionalGeneration(config).eval()
    sources = torch.tensor([[0, 5, 6, 7, SEP], [0, 9, 10, 11, SEP]])
    searcher = searchers()[0]
    out = decoder(searcher).generate(model, sources, num_samples=SAMPLES)
    with torch.no_grad():
        assert_second_segments(out, searcher, lambda b: _generate.model_step_fn(model, sources[b:b + 1], None, K, {}))


def test_answer_cut_at_max_length_still_gets_a_question(gpt2):
    sampler = fs.Sampler(top_k=5, seed=1, eos_id=SEP, max_length=2)
    out = fs.SegmentDecoder(sampler, fs.BeamSearch(SEP, num_beams=2, max_length=3)).generate(
        gpt2, torch.tensor([[5, 6, 7]]), num_samples=3)
    for answer, done, question in zip(out.first.sequences[0], out.first.finished[0], out.second[0]):
        assert done == (answer[-1] == SEP) and (done or len(answer) == 2)
        assert len(question) == 1 and 1 <= len(question[0]) <= 3


class RowStep:
    """Forkable step function whose logits for a row depend on that row's tokens alone (the prompt
    included), bit for bit, so a row decodes the same in any batch and any thread count."""

    def __init__(self, tokens):
        self.tokens = tokens

    def __call__(self, tokens, beam_idx):
        self.tokens = torch.cat([self.tokens[beam_idx], tokens], 1)
        logits = torch.stack([torch.randn(VOCAB, generator=torch.Generator().manual_seed(hash(tuple(row)) % 2**63))
                              for row in self.tokens.tolist()])
        logits[:, SEP] += 3.0  # first segments end after a varying number of tokens
        return logits

    def fork(self, index):
        return RowStep(self.tokens[index])


ITEM_TRIES = [fs.Trie([[7, 8, SEP], [7, 9, 10, SEP], [11, SEP]], eos_id=SEP),
              fs.Trie([[12, 13, SEP], [12, 14, 15, SEP], [7, 8, SEP]], eos_id=SEP),
              fs.Trie([[16, SEP], [17, 18, 19, SEP], [17, 20, SEP], [17, 18, 21, SEP]], eos_id=SEP)]
ITEM_QUERIES = [[9, 10], [14, 15], [18, 21]]


@pytest.mark.parametrize("lookahead", [False, True], ids=["plain", "lookahead"])
@pytest.mark.parametrize("num_samples", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_per_item_tries_follow_the_batch_item(batch_size, num_samples, lookahead):
    prompts = torch.tensor([[5, 6], [30, 31], [32, 33]])[:batch_size]
    settings = {"num_beams": 3, "max_length": 4, "num_return_sequences": 2}
    per_item = fs.LCSLookahead(ITEM_QUERIES[:batch_size]) if lookahead else None
    searcher = fs.TrieBeamSearch(ITEM_TRIES[:batch_size], lookahead=per_item, **settings)
    sampler = fs.Sampler(seed=batch_size * 10 + num_samples, eos_id=SEP, max_length=4)
    out = fs.SegmentDecoder(sampler, searcher).search(
        RowStep(prompts.repeat_interleave(num_samples, 0)), batch_size, num_samples)
    for b, answers in enumerate(out.first.sequences):
        ref_searcher = fs.TrieBeamSearch(ITEM_TRIES[b], lookahead=fs.LCSLookahead(ITEM_QUERIES[b]) if lookahead else None,
                                         **settings)
        for i, answer in enumerate(answers):
            ref = ref_searcher.search(Forced(RowStep(prompts[b:b + 1].repeat(3, 1)), answer), 1)
            assert_second_segment(out, b, i, ref)
    assert out.second_token_scores is None
    if batch_size * num_samples > 1:  # the rows end at different steps (else the test misses the case)
        assert len({len(a) for item in out.first.sequences for a in item}) > 1


def test_bad_input(gpt2):
    with pytest.raises(TypeError, match="sampler must be a pyfastseq.Sampler"):
        fs.SegmentDecoder(fs.BeamSearch(SEP), fs.BeamSearch(SEP))
    with pytest.raises(TypeError, match="searcher must be a pyfastseq.BeamSearch or TrieBeamSearch"):
        fs.SegmentDecoder(fs.Sampler(eos_id=SEP), fs.Sampler(eos_id=SEP))
    plain = fs.SegmentDecoder(fs.Sampler(eos_id=SEP, max_length=2), fs.BeamSearch(SEP, num_beams=2))
    with pytest.raises(TypeError, match="step_fn must define fork"):
        plain.search(lambda t, b: torch.zeros(2, VOCAB), 2)

    class ForksIntoNothing:
        def __call__(self, tokens, beam_idx):
            return torch.zeros(len(beam_idx), VOCAB)

        def fork(self, index):
            return None

    with pytest.raises(TypeError, match="step_fn.fork must return a step function, got NoneType"):
        plain.search(ForksIntoNothing(), 1)
    with pytest.raises(TypeError, match="lookahead must be None or an object with a deltas"):
        fs.TrieBeamSearch(ITEM_TRIES[0], lookahead=fs.LCSLookahead)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        plain.generate(gpt2, torch.tensor([[5, 6]]), num_samples=0)
    two = fs.SegmentDecoder(fs.Sampler(eos_id=SEP, max_length=2), fs.TrieBeamSearch(ITEM_TRIES[:2], num_beams=2))
    for batch_size, num_samples in [(1, 2), (3, 1)]:
        with pytest.raises(ValueError, match=f"searcher's trie holds 2 tries but batch_size is {batch_size}"):
            two.search(RowStep(torch.zeros(batch_size * num_samples, 1, dtype=torch.long)), batch_size, num_samples)
    queries = fs.SegmentDecoder(fs.Sampler(eos_id=SEP, max_length=2), fs.TrieBeamSearch(
        ITEM_TRIES[0], num_beams=2, lookahead=fs.LCSLookahead([[5], [6]], start_after=SEP)))
    with pytest.raises(ValueError, match="searcher's lookahead holds 2 queries .one per batch item. but batch_size is 3"):
        queries.search(RowStep(torch.zeros(3, 1, dtype=torch.long)), 3, 1)
    with pytest.raises(ValueError, match="forked only after its first call"):
        fork_step(_generate.model_step_fn(gpt2, torch.tensor([[5, 6]]), None, 1, {}), torch.tensor([0]))
