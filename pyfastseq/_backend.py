"""Loads the native modules and adapts torch tensors to the raw pointers they take.

``_C`` (CPU) is always built and imported eagerly; ``_cuda`` is imported on first use by a CUDA
tensor, so importing pyfastseq never touches a GPU driver.
"""

from __future__ import annotations

import functools
import struct

import torch

from . import _C

__all__ = ["_C", "cuda", "on_gpu", "stream_of", "fill_bits", "unit_stride_aligned", "ELEM_BYTES"]

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


def fill_bits(value: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``value`` in ``dtype``, as an unsigned integer."""
    # Cached by the float64 bit pattern: 0.0 == -0.0, so a cache keyed on the value would mix them up.
    return _fill_bits(struct.unpack("<Q", struct.pack("<d", value))[0], dtype)


@functools.cache
def _fill_bits(value_bits: int, dtype: torch.dtype) -> int:
    value = struct.unpack("<d", struct.pack("<Q", value_bits))[0]
    bits = torch.tensor(value, dtype=dtype).view(torch.int16 if ELEM_BYTES[dtype] == 2 else torch.int32)
    return int(bits.item()) & ((1 << (8 * ELEM_BYTES[dtype])) - 1)


def unit_stride_aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself when the native kernels can index it as it is: unit stride along its last
    dimension (a dimension of one or none needs none) and an address that is a multiple of its
    element size. Otherwise a contiguous copy: a view made by ``torch.frombuffer`` at an odd offset,
    say, would have the kernels load and store misaligned elements (undefined in C++, a fault on a GPU)."""
    if (tensor.dim() == 0 or tensor.shape[-1] < 2 or tensor.stride(-1) == 1) \
            and tensor.data_ptr() % tensor.element_size() == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
