"""bitnet: drive BitNet b1.58 ternary accelerators from Python.

The default device is ``"sim"``, a bit-exact software model of the card that also runs real
BitNet b1.58 models on the CPU.
"""
from __future__ import annotations

from .core import BitNet, BitNetModelInfo, BitNetPerformance, BitNetStatus, default_device
from .errors import BitNetError, ErrorCode
from .numpy_api import (
    BitNetStream,
    bitnet_batch_inference,
    bitnet_inference,
    pad_sequences,
    tokens_to_numpy,
    unpad_sequence,
)

__version__ = "0.1.0"

# PyTorch glue (bitnet.torch_api), loaded on first use so that `import bitnet` never imports
# torch. Without torch, using one of these names raises ImportError naming the extra.
_TORCH_NAMES = frozenset({
    "BitNetModule",
    "BitNetForCausalLM",
    "BitLinear",
    "BitNetTransformer",
    "BitNetTransformerConfig",
    "export",
    "to_device",
})


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from . import torch_api   # raises ImportError('... pip install "bitnet[torch]"') without torch

        return getattr(torch_api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _TORCH_NAMES)

__all__ = [
    "BitNet",
    "BitNetError",
    "BitNetModelInfo",
    "BitNetPerformance",
    "BitNetStatus",
    "BitNetStream",
    "bitnet_batch_inference",
    "bitnet_inference",
    "pad_sequences",
    "tokens_to_numpy",
    "unpad_sequence",
    "ErrorCode",
    "default_device",
    "__version__",
]
