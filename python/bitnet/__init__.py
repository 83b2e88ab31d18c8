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
