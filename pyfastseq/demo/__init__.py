"""``pyfastseq-demo`` / ``python -m pyfastseq.demo``: end-to-end KBQA by constrained generation.

Seed 001's recipe on real facts: a question goes in, a UniLM-trained MiniLM generates
``subject [SEP] predicate`` constrained to a trie of the knowledge base's keys, and the answer is
looked up. Prints the data, the training, exact match for beams 1/4/8 with and without the LCS
lookahead, the majority-predicate baseline, and decode speed against transformers' ``generate``
with ``prefix_allowed_tokens_fn`` on the same model and questions.
"""

from __future__ import annotations

import argparse

import torch

PROFILES = {  # training steps, test questions, decode comparison questions
    "quick": (150, 200, 64),
    "full": (600, 1000, 200),
}


def main(argv: list[str] | None = None) -> dict:
    from . import evaluate, kb, model

    parser = argparse.ArgumentParser(prog="pyfastseq-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="train 600 steps (the loss plateaus there) and evaluate on 1,000 questions")
    parser.add_argument("--steps", type=int, help="training steps (overrides the profile)")
    parser.add_argument("--questions", type=int, help="test questions to evaluate (overrides the profile)")
    parser.add_argument("--compare", type=int, help="questions for the transformers speed comparison")
    parser.add_argument("--beams", default="1,4,8", help="beam widths to evaluate, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    steps, num_questions, num_compare = PROFILES["full" if args.full else "quick"]
    steps = args.steps if args.steps is not None else steps
    num_questions = args.questions if args.questions is not None else num_questions
    num_compare = args.compare if args.compare is not None else num_compare
    beams = [int(b) for b in args.beams.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    facts = kb.load_facts()
    train_set, test_set = kb.split(facts, seed=args.seed)
    test_set = test_set[:num_questions]
    subjects = sorted({f.subject for f in facts})
    print(f"knowledge base: {len(facts)} facts about {len(subjects)} countries, {len(kb.PREDICATES)} predicates "
          f"(countryinfo)")
    print(f"questions: {len(train_set)} train, {len(test_set)} test (held-out subjects and phrasings)")

    tokenizer, unilm = model.load()
    codec = model.Codec(tokenizer)
    trie, keys = evaluate.key_trie(codec, facts)
    print(f"model: all-MiniLM-L6-v2 as UniLM ({sum(p.numel() for p in unilm.parameters()) / 1e6:.1f}M parameters); "
          f"key trie: {trie}")

    losses = model.train(unilm, codec, train_set, steps=steps, batch_size=args.batch_size, seed=args.seed,
                         progress=not args.no_progress)
    if losses:
        print(f"trained {steps} steps of {args.batch_size}: loss {losses[0]:.3f} -> {sum(losses[-20:]) / len(losses[-20:]):.3f}")

    max_length = trie.depth
    results = {"baseline": kb.majority_predicate_baseline(train_set, test_set, subjects)}
    print(f"\nexact match on {len(test_set)} test questions (majority-predicate baseline: {results['baseline']:.1%})")
    print("  beams  plain   lookahead")
    for num_beams in beams:
        row = []
        for lookahead in (False, True):
            preds = evaluate.decode(unilm, codec, trie, test_set, num_beams, lookahead, max_length)
            assert all(tuple(p) in keys for p in preds), "a prediction left the knowledge base"
            results[(num_beams, lookahead)] = evaluate.exact_match(preds, test_set, keys)
            row.append(results[(num_beams, lookahead)])
        print(f"  {num_beams:5d}  {row[0]:6.1%}  {row[1]:6.1%}")

    compare = test_set[:num_compare]
    num_beams = max(beams)
    ours, t_ours = evaluate.timed(evaluate.decode, unilm, codec, trie, compare, num_beams, False, max_length)
    peer, t_peer = evaluate.timed(evaluate.decode_with_transformers, unilm, codec, trie, compare, num_beams, max_length)
    same = sum(a == b for a, b in zip(ours, peer))
    results["speedup"] = t_peer / t_ours
    results["identical"] = (same, len(compare))
    print(f"\ndecode {len(compare)} questions, {num_beams} beams, same model: pyfastseq {t_ours:.2f} s, "
          f"transformers generate(prefix_allowed_tokens_fn) {t_peer:.2f} s -> {results['speedup']:.1f}x; "
          f"identical outputs {same}/{len(compare)}")

    example = test_set[0]
    key = keys.get(tuple(evaluate.decode(unilm, codec, trie, [example], num_beams, True, max_length)[0]))
    answer = next((f.objects for f in facts if (f.subject, f.predicate) == key), ())
    print(f"\nexample: {example.text!r} -> {key} -> {', '.join(answer)}")
    return results
