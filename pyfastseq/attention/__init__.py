"""UniLM (prefix-LM) attention: Triton kernels, launchers, a PyTorch reference, transformers hook.

``forward.py`` / ``backward.py`` hold the Triton kernels (``tiles.py`` their shared helpers) and
``launch.py`` the launchers and autotuning; they import Triton and are loaded only when a call runs
them. ``reference.py`` is the dense-mask specification and CPU fallback; ``op.py`` the public
function and ``torch.library`` ops; ``hf.py`` the transformers ``AttentionInterface`` hook.
"""

from .op import UniLMAttention, backend_for, unilm_attention
from .reference import unilm_attention_reference, unilm_mask

__all__ = ["unilm_attention", "unilm_mask", "unilm_attention_reference", "UniLMAttention", "backend_for"]
