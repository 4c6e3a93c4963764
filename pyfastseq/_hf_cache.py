"""The keyword of a transformers model's KV cache: ``cache`` from transformers 5.24 on,
``past_key_values`` before (5.24 still takes the old name, with a deprecation warning, until 5.40)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any


@functools.cache
def library_cache_name() -> str:
    """What the installed transformers calls the cache in its forward calls and outputs."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def cache_kwarg(model: Any) -> str:
    """The keyword ``model``'s forward takes its cache by: the one its signature names, else the library's
    (models that forward ``**kwargs`` to their base model, like ``BertForMaskedLM``)."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return library_cache_name()


def cache_of(output: Any) -> Any:
    """The cache a forward call returned (None when it returned none)."""
    return getattr(output, library_cache_name(), None)
