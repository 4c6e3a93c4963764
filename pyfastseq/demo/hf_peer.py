"""A transformers ``generate()`` view of a UniLM model: the peer the demo times pyfastseq against.

transformers' generation loop expects a causal LM. This adapter gives it one: the first forward call
encodes the (left-padded) questions with the UniLM mask through :class:`pyfastseq.unilm.UniLMStep`
and returns its KV cache; every later call feeds the one new token per row to that cache, which
transformers itself reorders between beam steps. Both decoders therefore run the same model with the
same cache; only the search around it differs.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .._hf_cache import library_cache_name
from ..unilm import UniLM, UniLMStep


class UniLMForGeneration(PreTrainedModel, GenerationMixin):
    _supports_cache_class = True

    def __init__(self, unilm: UniLM):
        super().__init__(unilm.model.config)
        self.unilm = unilm
        self.generation_config = GenerationConfig(pad_token_id=unilm.pad_id)
        self._step: UniLMStep | None = None

    def forward(self, input_ids, attention_mask=None, cache=None, past_key_values=None, **kwargs):
        cache = past_key_values if cache is None else cache  # the name changed in transformers 5.24
        if self._step is None or cache is not self._step.cache:
            mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            sources = [row[keep].tolist() for row, keep in zip(input_ids, mask)]
            self._step = UniLMStep(self.unilm, sources, num_beams=1)
            logits = self._step.prefill()
        else:
            logits = self._step.extend(input_ids[:, -1:])
        return CausalLMOutputWithPast(logits=logits[:, None, :], **{library_cache_name(): self._step.cache})
