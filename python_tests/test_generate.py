"""generate() against transformers' generate on small randomly initialised GPT-2 and BART models."""

from __future__ import annotations

import random

import pytest
import torch

import pyfastseq as fs

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.native

VOCAB, EOS, PAD = 100, 1, 0


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def bart():
    torch.manual_seed(1)
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=2, eos_token_id=EOS, decoder_start_token_id=2,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    return transformers.BartForConditionalGeneration(config).eval()


@pytest.fixture(params=["cpu", "device"])
def search_route(request):
    """Where pyfastseq's search runs: the CPU step, or the device search (on the CUDA emulator, which
    takes the model's CPU logits for GPU ones)."""
    if request.param == "device":
        request.getfixturevalue("on_cuda_emulator")
    return request.param


def make_trie(kind: str, seed: int) -> fs.Trie:
    rng = random.Random(seed)
    if kind == "unequal":  # 3-8 tokens + eos, entries may be prefixes of others
        entries = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 8))] for _ in range(60)]
        entries += [e[:2] for e in entries[:10]]
        return fs.Trie(entries, eos_id=EOS)
    # equal length, no eos: every entry ends at a leaf
    return fs.Trie([[rng.randrange(3, VOCAB) for _ in range(4)] for _ in range(60)])


def allowed_fn(tries, prompt_len):
    """transformers' prefix_allowed_tokens_fn for per-item tries; past an entry only eos."""

    def fn(batch_id, ids):
        trie = tries[batch_id] if isinstance(tries, list) else tries
        node = trie.walk(ids[prompt_len:].tolist())
        tokens = trie.children(node)[0].tolist() if node >= 0 else []
        return tokens or [EOS]

    return fn


def hf_results(ids: torch.Tensor, scores, batch: int, nrs: int, prompt_len: int):
    seqs = []
    for row in ids[:, prompt_len:].tolist():
        seqs.append(row[: row.index(EOS) + 1] if EOS in row else row)
    seqs = [seqs[b * nrs:(b + 1) * nrs] for b in range(batch)]
    return seqs, None if scores is None else scores.view(batch, nrs).tolist()


def assert_same(ours: fs.BeamSearchOutput, seqs, scores, equal_length: bool):
    if equal_length:  # transformers pads a cut sequence only after max_new_tokens: nothing to strip
        seqs = [[s[:4] for s in item] for item in seqs]
    assert ours.sequences == seqs
    if scores is not None:
        for got, want in zip(ours.scores, scores):
            assert got == pytest.approx(want, abs=1e-4)


def greedy_scores(out, prompt_len, lp):
    """Length-penalised log-prob of transformers' greedy outputs, from its raw logits."""
    logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], 1)  # [B, T, V]
    gen = out.sequences[:, prompt_len:]
    scores = []
    for b in range(gen.shape[0]):
        row = gen[b].tolist()
        n = row.index(EOS) + 1 if EOS in row else len(row)
        scores.append(float(logp[b, torch.arange(n), gen[b, :n]].sum()) / n**lp)
    return torch.tensor(scores)


EARLY = (True, False, "never")
# every k x length_penalty x trie kind; num_return_sequences and early_stopping vary along the grid
CASES = [(k, lp, kind, 1 if k == 1 else 1 + 2 * ((int(lp) + (kind == "equal")) % 2), EARLY[(k + int(lp)) % 3])
         for k in (1, 4, 8) for lp in (0.0, 1.0, 2.0) for kind in ("unequal", "equal")]


@pytest.mark.parametrize("k,lp,kind,nrs,early_stopping", CASES)
def test_generate__gpt2_trie__matches_transformers(gpt2, k, lp, kind, nrs, early_stopping, search_route):
    trie = make_trie(kind, seed=k + int(lp))
    prompt = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(k))
    max_new = 4 if kind == "equal" else 7
    ours = fs.TrieBeamSearch(trie, num_beams=k, max_length=max_new, length_penalty=lp, early_stopping=early_stopping,
                             num_return_sequences=nrs).generate(gpt2, prompt)
    out = gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=k, max_new_tokens=max_new,
                        length_penalty=lp, early_stopping=early_stopping, num_return_sequences=nrs, do_sample=False,
                        prefix_allowed_tokens_fn=allowed_fn(trie, 5), return_dict_in_generate=True,
                        output_scores=True, output_logits=k == 1, pad_token_id=PAD)
    scores = greedy_scores(out, 5, lp) if k == 1 else out.sequences_scores
    seqs, scores = hf_results(out.sequences, scores, 2, nrs, 5)
    assert_same(ours, seqs, scores, kind == "equal")
    for item in ours.sequences:
        assert all(trie.contains(s) or len(s) == max_new for s in item)


@pytest.mark.parametrize("k,lp,early_stopping", [(1, 1.0, True), (4, 0.0, True), (4, 1.0, False), (4, 2.0, "never"),
                                                  (8, 2.0, True), (8, 1.0, "never")])
def test_generate__gpt2_unconstrained__matches_transformers(gpt2, k, lp, early_stopping, search_route):
    prompt = torch.randint(3, VOCAB, (3, 4), generator=torch.Generator().manual_seed(3))
    nrs = min(k, 2)
    ours = fs.BeamSearch(EOS, num_beams=k, max_length=10, length_penalty=lp, early_stopping=early_stopping,
                         num_return_sequences=nrs).generate(gpt2, prompt)
    out = gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=k, max_new_tokens=10,
                        length_penalty=lp, early_stopping=early_stopping, num_return_sequences=nrs, do_sample=False,
                        return_dict_in_generate=True, output_scores=True, output_logits=k == 1, pad_token_id=PAD)
    scores = greedy_scores(out, 4, lp) if k == 1 else out.sequences_scores
    seqs, scores = hf_results(out.sequences, scores, 3, nrs, 4)
    assert_same(ours, seqs, scores, False)


@pytest.fixture(scope="module")
def eos_eager_gpt2():
    """A GPT-2 whose eos logit is ~4.5 above the rest at every position: without min_length every
    hypothesis would end at once."""
    torch.manual_seed(2)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.ln_f.bias[0] = 3.0
        model.lm_head.weight[EOS, 0] = 1.5
    return model


@pytest.mark.parametrize("min_length", [0, 1, 3, 6])
@pytest.mark.parametrize("k", [1, 4])
def test_generate__min_length_is_min_new_tokens(eos_eager_gpt2, min_length, k, search_route):
    prompt = torch.randint(3, VOCAB, (2, 4), generator=torch.Generator().manual_seed(min_length))
    ours = fs.BeamSearch(EOS, num_beams=k, max_length=6, min_length=min_length, num_return_sequences=k).generate(
        eos_eager_gpt2, prompt)
    out = eos_eager_gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=k, max_new_tokens=6,
                                  min_new_tokens=min_length, num_return_sequences=k, do_sample=False,
                                  return_dict_in_generate=True, output_scores=True, output_logits=k == 1,
                                  pad_token_id=PAD)
    scores = greedy_scores(out, 4, 1.0) if k == 1 else out.sequences_scores
    seqs, scores = hf_results(out.sequences, scores, 2, k, 4)
    if k == 1:
        scores = None  # transformers' greedy scores do not see the min_new_tokens mask
    assert_same(ours, seqs, scores, False)
    if min_length < 6:  # the best ends at the first eos allowed
        assert all(item[0] == item[0][:min_length] + [EOS] for item in ours.sequences)


@pytest.mark.parametrize("k,nrs", [(1, 1), (4, 2), (8, 3)])
@pytest.mark.parametrize("min_length", [2, 4])
def test_generate__min_length_past_the_entries__allowed_tokens_forced_as_transformers(gpt2, k, nrs, min_length,
                                                                                     search_route):
    # Entries of 1-3 tokens + eos: min_length leaves beams whose only way on is the blocked eos. Where
    # that is every beam of an item, transformers' PrefixConstrainedLogitsProcessor gives each beam's
    # allowed tokens log-prob 0 (eos included), and so the entries end short of min_length.
    rng = random.Random(k + min_length)
    trie = fs.Trie([[rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 3))] for _ in range(12)], eos_id=EOS)
    prompt = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(k))
    ours = fs.TrieBeamSearch(trie, num_beams=k, max_length=6, min_length=min_length,
                             num_return_sequences=nrs).generate(gpt2, prompt)
    out = gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=k, max_new_tokens=6,
                        min_new_tokens=min_length, num_return_sequences=nrs, do_sample=False,
                        prefix_allowed_tokens_fn=allowed_fn(trie, 5), return_dict_in_generate=True,
                        output_scores=True, pad_token_id=PAD)
    # transformers' greedy scores do not see the processors, so they are compared with beams only
    seqs, scores = hf_results(out.sequences, None if k == 1 else out.sequences_scores, 2, nrs, 5)
    assert_same(ours, seqs, scores, False)
    lengths = [len(s) for item in ours.sequences for s in item]
    assert lengths and all(n <= 4 for n in lengths)
    if min_length == 4:  # every entry ends with the blocked eos
        assert all(trie.contains(s) for item in ours.sequences for s in item)


def test_generate__gpt2_left_padded_prompts_and_per_item_tries(gpt2):
    tries = [make_trie("unequal", 20), make_trie("unequal", 21)]
    prompt = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(prompt)
    prompt[0, :2], mask[0, :2] = PAD, 0
    ours = fs.TrieBeamSearch(tries, num_beams=4, max_length=6, num_return_sequences=2).generate(
        gpt2, prompt, attention_mask=mask)
    out = gpt2.generate(prompt, attention_mask=mask, num_beams=4, max_new_tokens=6, num_return_sequences=2,
                        early_stopping=True,
                        do_sample=False, prefix_allowed_tokens_fn=allowed_fn(tries, 6),
                        return_dict_in_generate=True, output_scores=True, pad_token_id=PAD)
    seqs, scores = hf_results(out.sequences, out.sequences_scores, 2, 2, 6)
    assert_same(ours, seqs, scores, False)


@pytest.mark.parametrize("k,lp,kind,nrs,early_stopping", [
    (1, 1.0, "unequal", 1, True), (4, 0.0, "unequal", 2, True), (4, 2.0, "equal", 1, False),
    (8, 1.0, "unequal", 3, "never"), (8, 1.0, "equal", 2, True), (8, 2.0, "unequal", 1, False)])
def test_generate__bart_trie__matches_transformers(bart, k, lp, kind, nrs, early_stopping, search_route):
    trie = make_trie(kind, seed=30 + k)
    source = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(k))
    max_new = 4 if kind == "equal" else 7
    ours = fs.TrieBeamSearch(trie, num_beams=k, max_length=max_new, length_penalty=lp, early_stopping=early_stopping,
                             num_return_sequences=nrs).generate(bart, source)
    out = bart.generate(source, attention_mask=torch.ones_like(source), num_beams=k, max_new_tokens=max_new,
                        length_penalty=lp, early_stopping=early_stopping, num_return_sequences=nrs, do_sample=False,
                        prefix_allowed_tokens_fn=allowed_fn(trie, 1), return_dict_in_generate=True,
                        output_scores=True, output_logits=k == 1)
    scores = greedy_scores(out, 1, lp) if k == 1 else out.sequences_scores
    seqs, scores = hf_results(out.sequences, scores, 2, nrs, 1)
    assert_same(ours, seqs, scores, kind == "equal")


@pytest.mark.parametrize("k", [1, 4])
def test_generate__bart_unconstrained__matches_transformers(bart, k):
    source = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(9))
    ours = fs.BeamSearch(EOS, num_beams=k, max_length=8, num_return_sequences=k).generate(bart, source)
    out = bart.generate(source, attention_mask=torch.ones_like(source), num_beams=k, max_new_tokens=8,
                        early_stopping=True,
                        num_return_sequences=k, do_sample=False, return_dict_in_generate=True, output_scores=True,
                        output_logits=k == 1)
    scores = greedy_scores(out, 1, 1.0) if k == 1 else out.sequences_scores
    seqs, scores = hf_results(out.sequences, scores, 2, k, 1)
    assert_same(ours, seqs, scores, False)


@pytest.mark.parametrize("input_ids,error,message", [
    (torch.tensor([1, 2, 3]), ValueError, "input_ids must be a 2-D"),
    ([[1, 2, 3]], ValueError, "input_ids must be a 2-D"),
    (torch.tensor([[4.0, 5.0]]), TypeError, "input_ids must hold integer token ids, got dtype torch.float32"),
    (torch.tensor([[True, False]]), TypeError, "input_ids must hold integer"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "input_ids must have at least one column"),
    (torch.tensor([[4, VOCAB]]), ValueError, rf"input_ids must lie in \[0, {VOCAB}\) .*, got {VOCAB}$"),
    (torch.tensor([[-1, 5]]), ValueError, r"input_ids must lie in .*, got -1$"),
])
@pytest.mark.parametrize("model", ["gpt2", "bart"])
def test_generate__bad_input_ids__model(model, input_ids, error, message, request):
    with pytest.raises(error, match=message):
        fs.BeamSearch(EOS, num_beams=2).generate(request.getfixturevalue(model), input_ids)


def test_generate__bad_attention_mask_and_model(gpt2):
    with pytest.raises(ValueError, match="attention_mask"):
        fs.BeamSearch(EOS).generate(gpt2, torch.tensor([[4, 5]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(TypeError, match="attention_mask must be a tensor or None, got list"):
        fs.BeamSearch(EOS).generate(gpt2, torch.tensor([[4, 5]]), attention_mask=[[1, 1]])
    for values in ([[1.0, float("nan")]], [[1, -5]], [[1, 2]]):
        with pytest.raises(ValueError, match=r"attention_mask must hold 0 \(padding\) and 1 \(token\) only"):
            fs.BeamSearch(EOS).generate(gpt2, torch.tensor([[4, 5]]), attention_mask=torch.tensor(values))
    with pytest.raises(ValueError, match="attention_mask is on the meta device"):
        fs.BeamSearch(EOS).generate(gpt2, torch.tensor([[4, 5]]), attention_mask=torch.ones(1, 2, device="meta"))
    with pytest.raises(ValueError, match="input_ids is on the meta device"):
        fs.BeamSearch(EOS).generate(gpt2, torch.ones(1, 2, dtype=torch.long, device="meta"))
    with pytest.raises(TypeError, match="model"):
        fs.BeamSearch(EOS).generate(object(), torch.tensor([[4, 5]]))


def test_generate__pad_in_prompts_without_mask__mask_inferred_as_transformers(gpt2):
    prompt = torch.randint(3, VOCAB, (3, 6), generator=torch.Generator().manual_seed(6))
    prompt[0, :2], prompt[2, :1] = PAD, PAD
    ours = fs.BeamSearch(EOS, num_beams=4, max_length=6, num_return_sequences=2).generate(gpt2, prompt)
    out = gpt2.generate(prompt, num_beams=4, max_new_tokens=6, num_return_sequences=2, early_stopping=True,
                        do_sample=False, return_dict_in_generate=True, output_scores=True, pad_token_id=PAD)
    assert_same(ours, *hf_results(out.sequences, out.sequences_scores, 3, 2, 6), False)
    masked = fs.BeamSearch(EOS, num_beams=4, max_length=6, num_return_sequences=2).generate(
        gpt2, prompt, attention_mask=(prompt != PAD).long())
    assert masked.sequences == ours.sequences


def test_generate__decoder_only_token_type_ids__carried_as_transformers(gpt2):
    prompt = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(7))
    types = torch.tensor([[5, 5, 6, 6, 6], [5, 5, 5, 5, 7]])  # GPT-2 embeds segment ids with its token table
    ours = fs.BeamSearch(EOS, num_beams=3, max_length=5, num_return_sequences=3).generate(
        gpt2, prompt, token_type_ids=types)
    out = gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), token_type_ids=types, num_beams=3,
                        max_new_tokens=5, num_return_sequences=3, early_stopping=True, do_sample=False,
                        return_dict_in_generate=True, output_scores=True, pad_token_id=PAD)
    assert_same(ours, *hf_results(out.sequences, out.sequences_scores, 2, 3, 5), False)
    plain = fs.BeamSearch(EOS, num_beams=3, max_length=5, num_return_sequences=3).generate(gpt2, prompt)
    assert plain.scores != ours.scores  # the segments do reach the model


def test_generate__narrow_integer_input_ids__same_as_int64(gpt2):
    prompt = torch.randint(3, VOCAB, (2, 4), generator=torch.Generator().manual_seed(8))
    search = fs.BeamSearch(EOS, num_beams=2, max_length=4)
    want = search.generate(gpt2, prompt)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert search.generate(gpt2, prompt.to(dtype)).sequences == want.sequences


def test_generate__encoder_and_prompt_run_without_grad(bart, gpt2):
    seen = []
    hooks = [bart.get_encoder().register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled())),
             gpt2.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))]
    try:
        source = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(9))
        fs.BeamSearch(EOS, num_beams=2, max_length=3).generate(bart, source)
        fs.BeamSearch(EOS, num_beams=2, max_length=3).generate(gpt2, source)
        fs.Sampler(eos_id=EOS, max_length=3, seed=0).generate(gpt2, source)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) > 3 and not any(seen)


@pytest.mark.parametrize("model", ["gpt2", "bart"])
def test_generate__unknown_model_kwarg__value_error(model, request):
    with pytest.raises(ValueError, match=r"model_kwargs \['atention_mask'\] are not arguments"):
        fs.BeamSearch(EOS).generate(request.getfixturevalue(model), torch.tensor([[4, 5]]),
                                    atention_mask=torch.ones(1, 2))


@pytest.mark.parametrize("start", [VOCAB, -1, "2", 2.0, True])
def test_generate__bad_decoder_start_token_id(bart, start):
    with pytest.raises(ValueError, match=rf"decoder_start_token_id must be a token id in \[0, {VOCAB}\)"):
        fs.BeamSearch(EOS).generate(bart, torch.tensor([[4, 5]]), decoder_start_token_id=start)


def _state_space_model(kind: str):
    torch.manual_seed(2)
    if kind == "mamba2":
        config = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_heads=4, head_dim=16,
                                           n_groups=1, expand=2, num_hidden_layers=1, chunk_size=16,
                                           bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
        model = transformers.Mamba2ForCausalLM(config)
    else:
        config_class, model_class = {"mamba": (transformers.MambaConfig, transformers.MambaForCausalLM),
                                     "falcon_mamba": (transformers.FalconMambaConfig,
                                                      transformers.FalconMambaForCausalLM)}[kind]
        model = model_class(config_class(vocab_size=VOCAB, hidden_size=32, state_size=4, num_hidden_layers=1,
                                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD))
    with torch.no_grad():  # sharper logits than the initialisation's: every step's scores tell
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4)
    return model.eval()


@pytest.mark.parametrize("kind", ["mamba", "falcon_mamba", "mamba2"])
def test_generate__state_space_models__match_transformers(kind):
    # Their cached steps take no attention mask in transformers' generate: a full-length one would
    # stretch the one-token step.
    model = _state_space_model(kind)
    trie = make_trie("unequal", 40)
    prompt = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(10))
    ours = fs.TrieBeamSearch(trie, num_beams=3, max_length=6, num_return_sequences=2).generate(model, prompt)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=3, max_new_tokens=6,
                         num_return_sequences=2, early_stopping=True, do_sample=False,
                         prefix_allowed_tokens_fn=allowed_fn(trie, 5), return_dict_in_generate=True,
                         output_scores=True, pad_token_id=PAD)
    assert_same(ours, *hf_results(out.sequences, out.sequences_scores, 2, 2, 5), False)


def test_generate__model_without_a_cache__type_error():
    torch.manual_seed(3)
    config = transformers.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                     intermediate_size=64, context_length=64, bos_token_id=EOS, eos_token_id=EOS,
                                     pad_token_id=PAD)
    with pytest.raises(TypeError, match="RwkvForCausalLM returned no cache that generate.. can reorder"):
        fs.BeamSearch(EOS, num_beams=2, max_length=3).generate(transformers.RwkvForCausalLM(config).eval(),
                                                               torch.tensor([[4, 5, 6]]))


@pytest.mark.parametrize("kwargs,error,message", [
    ({"token_type_ids": torch.tensor([1, 1, 1])}, ValueError,
     r"token_type_ids must be a tensor with the shape of input_ids \(1, 3\), got \(3,\)"),
    ({"token_type_ids": torch.tensor([[1, 1]])}, ValueError, r"token_type_ids must be .*, got \(1, 2\)"),
    ({"token_type_ids": [[1, 1, 1]]}, ValueError, r"token_type_ids must be .*, got list"),
    ({"position_ids": torch.tensor([[0, 1, 2]])}, ValueError, r"model_kwargs \['position_ids'\] are set by generate"),
    ({"use_cache": False}, ValueError, r"model_kwargs \['use_cache'\] are set by generate"),
])
def test_generate__model_kwargs_generate_sets_or_cannot_carry(gpt2, kwargs, error, message):
    with pytest.raises(error, match=message):
        fs.BeamSearch(EOS, num_beams=2, max_length=3).generate(gpt2, torch.tensor([[4, 5, 6]]), **kwargs)
