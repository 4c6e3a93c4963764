"""``pyfastseq.show_config()``: what this installation was built with and can use."""

from __future__ import annotations

import importlib.util
import os

import torch

from . import __version__, _backend


def config() -> dict:
    """Version, compiled backends, CUDA architectures, and whether a GPU and Triton are usable."""
    info = {"version": __version__, "torch": torch.__version__, **_backend._C.build_info()}
    try:
        cuda = _backend.cuda()
        info["cuda_module"] = True
        info["cuda_architectures"] = cuda.architectures
    except RuntimeError:
        info["cuda_module"] = False
        info["cuda_architectures"] = ""
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    has_triton = importlib.util.find_spec("triton") is not None
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    info["triton"] = (
        ("interpreter (CPU)" if interpreted else "GPU" if torch.cuda.is_available() else "installed, no GPU")
        if has_triton else "not installed"
    )
    return info


def show_config() -> None:
    """Print :func:`config` one key per line."""
    for key, value in config().items():
        print(f"{key:>20}: {value}")
