"""Loads the native modules and adapts torch tensors to the raw pointers they take.

``_C`` (CPU) is always built and imported eagerly; ``_cuda`` is imported on first use by a CUDA
tensor, so importing pyfastseq never touches a GPU driver.
"""

from __future__ import annotations

import functools

import torch

from . import _C

__all__ = ["_C", "cuda", "on_gpu", "stream_of", "fill_bits", "ELEM_BYTES"]

# Floating dtypes the masking kernels take, and their element sizes.
ELEM_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@functools.cache
def cuda():
    """The ``_cuda`` extension module; RuntimeError if this build has none."""
    try:
        from . import _cuda
    except ImportError as exc:
        raise RuntimeError(
            "pyfastseq was built without its CUDA module (nvcc was not found at build time, or "
            "PYFASTSEQ_CUDA=OFF); reinstall on a machine with the CUDA toolkit to use CUDA tensors"
        ) from exc
    return _cuda


def on_gpu(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s kernels run on the GPU (the ``_cuda`` route). The tests' CUDA emulator
    replaces this, with :func:`cuda` and :func:`stream_of`, to send CPU tensors down that route."""
    return tensor.device.type == "cuda"


def stream_of(tensor: torch.Tensor) -> int:
    """The raw ``cudaStream_t`` of the current stream on ``tensor``'s device."""
    return torch.cuda.current_stream(tensor.device).cuda_stream


@functools.cache
def fill_bits(value: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``value`` in ``dtype``, as an unsigned integer."""
    bits = torch.tensor(value, dtype=dtype).view(torch.int16 if ELEM_BYTES[dtype] == 2 else torch.int32)
    return int(bits.item()) & ((1 << (8 * ELEM_BYTES[dtype])) - 1)
