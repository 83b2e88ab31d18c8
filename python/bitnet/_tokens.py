"""Argument checking shared by the public API: token sequences and generation parameters."""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import BitNetValueError, ErrorCode

_INT32_MAX = 2**31 - 1


def as_token_array(tokens: Any, name: str = "input_tokens") -> np.ndarray:
    """Return ``tokens`` as a 1-D C-contiguous int32 array, or raise TypeError/ValueError.

    Accepts a list or tuple of Python ints, or a 1-D NumPy (or array-like) integer array.
    Booleans, floats and objects are rejected with TypeError, so that ``[1.5]`` or
    ``np.array([True])`` never silently turns into token ids.
    """
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of integer token ids, not {type(tokens).__name__}")
    if isinstance(tokens, np.ndarray):
        arr = tokens
    elif hasattr(tokens, "__array__") and not isinstance(tokens, (list, tuple)):
        arr = np.asarray(tokens)
    elif isinstance(tokens, (list, tuple, range)):
        for i, t in enumerate(tokens):
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (numbers.Integral, np.integer)):
                raise TypeError(f"{name}[{i}] is {t!r} ({type(t).__name__}); token ids must be integers")
        arr = np.asarray(list(tokens), dtype=np.int64) if len(tokens) else np.zeros(0, dtype=np.int64)
    else:
        raise TypeError(f"{name} must be a list, tuple or 1-D integer NumPy array, not {type(tokens).__name__}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise BitNetValueError(ErrorCode.INVALID, f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise BitNetValueError(ErrorCode.INVALID, f"{name} is empty; pass at least one token id")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise BitNetValueError(ErrorCode.INVALID, f"{name} holds a negative token id ({lo})")
    if hi > _INT32_MAX:
        raise BitNetValueError(ErrorCode.INVALID, f"{name} holds token id {hi}, beyond int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_count(value: Any, name: str, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
    """An integer argument such as ``max_output``: TypeError if not an int, ValueError if out of range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if v < minimum or v > maximum:
        raise BitNetValueError(ErrorCode.INVALID, f"{name} must be in [{minimum}, {maximum}], got {v}")
    return v


def check_float(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise BitNetValueError(ErrorCode.INVALID, f"{name} must not be NaN")
    return v


def check_sampling(temperature: Any, top_k: Any, top_p: Any, seed: Any) -> tuple:
    t = check_float(temperature, "temperature")
    if not math.isfinite(t) or t < 0:
        raise BitNetValueError(ErrorCode.INVALID, f"temperature must be finite and >= 0 (0 = greedy), got {t}")
    k = check_count(top_k, "top_k", 0)
    p = check_float(top_p, "top_p")
    if not (0.0 < p <= 1.0):
        raise BitNetValueError(ErrorCode.INVALID, f"top_p must be in (0, 1], got {p}")
    if seed is None:
        import secrets

        s = secrets.randbits(63)
    else:
        s = check_count(seed, "seed", 0, 2**64 - 1)
    return t, k, p, s


def check_stop_tokens(stop: Optional[Iterable[int]], default: Sequence[int], name: str = "stop_token_ids") -> list:
    if stop is None:
        return list(default)
    if isinstance(stop, (numbers.Integral, np.integer)) and not isinstance(stop, (bool, np.bool_)):
        stop = [int(stop)]
    if isinstance(stop, (str, bytes, dict)) or not hasattr(stop, "__iter__"):
        raise TypeError(f"{name} must be a token id or a list of token ids, not {type(stop).__name__}")
    out = []
    for i, t in enumerate(stop):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (numbers.Integral, np.integer)):
            raise TypeError(f"{name}[{i}] must be an integer token id, got {t!r}")
        if int(t) < 0 or int(t) > _INT32_MAX:
            raise BitNetValueError(ErrorCode.INVALID, f"{name}[{i}] = {int(t)} is not a token id")
        out.append(int(t))
    return out
