"""The sampling step outside the model: pyfastseq's native step vs. the usual torch chain.

Precomputed fp32 logits for 80 and 800 rows over a 32k vocabulary. The peer is what a PyTorch
decoder does per step: temperature, ``topk`` (or a full descending ``sort`` when only top-p cuts),
``softmax``, ``cumsum`` top-p mask, ``multinomial`` (just ``softmax`` + ``multinomial`` with no cut),
and the drawn token's model log-prob from ``log_softmax`` (pyfastseq returns that log-prob too).
Draws differ by generator, so correctness is checked as: every token either side draws lies in the
reference support, and our log-probs equal ``log_softmax``.

Each test times the peer and ours in the same run and records ``peer_min_s`` and ``speedup``
(fastest run vs. fastest run, the stable figure on a shared machine) in ``extra_info``.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from timing import best_time, stat

from pyfastseq.reference.sampling import sampling_probs
from pyfastseq.sampling import _sample_step

VOCAB = 32_000
# (top_k, top_p, temperature, live columns: the rest are masked with a finite fill, None: all live)
SETTINGS = {
    "top_k=50,top_p=0.9,T=0.8": (50, 0.9, 0.8, None),
    "top_p=0.9": (0, 0.9, 1.0, None),
    "plain": (0, 1.0, 1.0, None),
    # A constrained row masked with -1e9 rather than -inf: fewer live tokens than top_k, so the
    # k-th logit ties with the whole masked rest of the row.
    "top_k=50,10_live,fill=-1e9": (50, 1.0, 1.0, 10),
}


def torch_sample(logits: torch.Tensor, top_k: int, top_p: float, temperature: float, gen: torch.Generator):
    x = logits / temperature  # [N, V]
    if top_k == 0 and top_p == 1.0:
        token = torch.multinomial(torch.softmax(x, dim=-1), 1, generator=gen)  # [N, 1]
        return token[:, 0], torch.log_softmax(logits, -1).gather(-1, token)[:, 0]
    vals, idx = x.topk(top_k, dim=-1) if top_k else x.sort(dim=-1, descending=True)  # [N, K] best first
    probs = torch.softmax(vals, dim=-1)  # [N, K] top-k renormalised
    if top_p < 1.0:
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)  # [N, K] shortest prefix reaching p
    token = idx.gather(-1, torch.multinomial(probs, 1, generator=gen))  # [N, 1]
    return token[:, 0], torch.log_softmax(logits, -1).gather(-1, token)[:, 0]


@pytest.mark.parametrize("rows", [80, 800])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_sample_step(benchmark, rows, setting):
    top_k, top_p, temperature, live = SETTINGS[setting]
    logits = torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    if live is not None:
        logits[:, live:] = -1e9
    temps = np.full(rows, temperature, dtype=np.float32)
    gen = torch.Generator().manual_seed(1)

    def peer():
        return torch_sample(logits, top_k, top_p, temperature, gen)

    def ours():
        return _sample_step(logits, temps, top_k, top_p, seed=7, step=0)

    token, logprob, _ = ours()
    support = sampling_probs(logits[:80], top_k, top_p, temperature) > 0
    assert support[torch.arange(min(rows, 80)), torch.from_numpy(token[:80]).long()].all()
    peer_token, peer_logprob = peer()
    assert support[torch.arange(min(rows, 80)), peer_token[:80]].all()
    np.testing.assert_allclose(logprob, torch.log_softmax(logits, -1)[torch.arange(rows), token].numpy(), atol=1e-4)
    peer_s = best_time(peer, rounds=5 if rows == 800 else 10)
    benchmark.pedantic(ours, rounds=10 if rows == 800 else 20, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        rows=rows, vocab=VOCAB, setting=setting, dtype="float32", threads=torch.get_num_threads(),
        peer="torch: topk/sort + softmax + cumsum top-p + multinomial + log_softmax",
        peer_min_s=peer_s,
    )
    benchmark.extra_info["speedup"] = peer_s / stat(benchmark, "min")
