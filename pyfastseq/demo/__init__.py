"""``pyfastseq-demo``: build a trie over a small catalogue and constrain a step of logits with it."""

from __future__ import annotations

import argparse

import torch

from ..trie import Trie

CATALOGUE = {
    "paris": [12, 40, 7],
    "paris hilton": [12, 40, 7, 55, 3],
    "parma": [12, 41],
    "berlin": [19, 8],
    "bern": [19, 9],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pyfastseq-demo", description=__doc__)
    parser.add_argument("--vocab", type=int, default=64, help="vocabulary size of the fake model")
    args = parser.parse_args(argv)

    eos = 1
    trie = Trie(CATALOGUE.values(), eos_id=eos)
    print(f"built {trie}")
    prefix = [12, 40, 7]
    node = trie.walk(prefix)
    tokens, _ = trie.children(node)
    print(f"after {prefix} the trie allows tokens {tokens.tolist()} (eos={eos} ends 'paris')")

    logits = torch.randn(2, args.vocab)
    trie.mask_logits(logits, [trie.root, node])
    for row, name in enumerate(["root", "'paris'"]):
        allowed = torch.isfinite(logits[row]).nonzero().flatten().tolist()
        print(f"row {row} at {name}: finite logits at {allowed}, best {int(logits[row].argmax())}")


if __name__ == "__main__":
    main()
