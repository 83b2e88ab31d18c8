"""NumPy API: one-call inference, batched inference, streaming, and token-array helpers.

All functions take token ids as lists, tuples or integer NumPy arrays and return int32 arrays.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, List, Optional, Sequence, Union

import numpy as np

from ._tokens import as_token_array, check_count, check_sampling, check_stop_tokens
from .core import BitNet, _abort_unfinished, _job_tokens
from .errors import BitNetValueError, ErrorCode

__all__ = [
    "bitnet_inference",
    "bitnet_batch_inference",
    "tokens_to_numpy",
    "pad_sequences",
    "unpad_sequence",
    "BitNetStream",
]

PathLike = Union[str, "os.PathLike[str]"]


def tokens_to_numpy(tokens: Any) -> np.ndarray:
    """Token ids (list, tuple, NumPy array, or a 1-D torch tensor) as a 1-D int32 array."""
    if hasattr(tokens, "detach") and hasattr(tokens, "cpu"):   # a torch tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    return as_token_array(tokens, "tokens")


def pad_sequences(sequences: Sequence[Any], max_len: Optional[int] = None, pad_token_id: int = 0) -> np.ndarray:
    """Right-pad token sequences into a 2-D int32 array ``[len(sequences), max_len]``.

    ``max_len`` defaults to the longest sequence; a sequence longer than ``max_len`` raises
    ValueError (truncating token ids silently would change the prompt).
    """
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
        sequences = list(sequences)
    if not isinstance(sequences, (list, tuple)):
        raise TypeError(f"sequences must be a list or tuple of token sequences, not {type(sequences).__name__}")
    if len(sequences) == 0:
        raise BitNetValueError(ErrorCode.INVALID, "sequences is empty")
    pad = check_count(pad_token_id, "pad_token_id", 0)
    rows = [as_token_array(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
    longest = max(len(r) for r in rows)
    n = longest if max_len is None else check_count(max_len, "max_len", 1)
    out = np.full((len(rows), n), pad, dtype=np.int32)
    for i, r in enumerate(rows):
        if len(r) > n:
            raise BitNetValueError(ErrorCode.INVALID, f"sequences[{i}] has {len(r)} tokens, more than max_len={n}")
        out[i, : len(r)] = r
    return out


def unpad_sequence(sequence: Any, pad_token_id: int = 0) -> np.ndarray:
    """Strip leading and trailing ``pad_token_id`` from one sequence (right or left padding).

    Pad ids inside the sequence are kept. Returns a 1-D int32 array (possibly empty).
    """
    pad = check_count(pad_token_id, "pad_token_id", 0)
    arr = np.asarray(sequence)
    if arr.ndim != 1:
        raise BitNetValueError(ErrorCode.INVALID, f"sequence must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    arr = as_token_array(arr, "sequence")
    keep = np.nonzero(arr != pad)[0]
    if keep.size == 0:
        return np.zeros(0, dtype=np.int32)
    return arr[keep[0] : keep[-1] + 1].copy()


def bitnet_inference(
    input_tokens: Any,
    model_path: PathLike,
    device: Optional[str] = None,
    max_output: int = 1024,
    **generate_kwargs: Any,
) -> np.ndarray:
    """Open a device, load ``model_path``, generate, close; return the generated tokens (int32).

    ``generate_kwargs`` are :meth:`BitNet.inference`'s (``temperature``, ``top_k``, ``top_p``,
    ``seed``, ``stop_token_ids``).
    """
    tokens = as_token_array(input_tokens)
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        return bn.inference(tokens, max_output, **generate_kwargs)


def _batch_rows(input_batch: Any, pad: int, lengths: Optional[Sequence[int]]) -> List[np.ndarray]:
    if isinstance(input_batch, np.ndarray) or (hasattr(input_batch, "__array__") and not isinstance(input_batch, (list, tuple))):
        arr = np.asarray(input_batch)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"input_batch must hold integer token ids, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise BitNetValueError(ErrorCode.INVALID, f"input_batch must be 2-D [batch, seq], got shape {arr.shape}")
        seqs: List[Any] = list(arr)
    elif isinstance(input_batch, (list, tuple)):
        seqs = list(input_batch)
    else:
        raise TypeError(f"input_batch must be a 2-D integer array or a list of sequences, not {type(input_batch).__name__}")
    if not seqs:
        raise BitNetValueError(ErrorCode.INVALID, "input_batch is empty")
    rows = []
    if lengths is not None:
        if len(lengths) != len(seqs):
            raise BitNetValueError(ErrorCode.INVALID, f"lengths has {len(lengths)} entries for {len(seqs)} rows")
        for i, (s, n) in enumerate(zip(seqs, lengths)):
            row = np.asarray(s)
            n = check_count(n, f"lengths[{i}]", 1, len(row))
            rows.append(as_token_array(row[:n], f"input_batch[{i}]"))
        return rows
    for i, s in enumerate(seqs):
        row = unpad_sequence(as_token_array(s, f"input_batch[{i}]"), pad)
        if row.size == 0:
            raise BitNetValueError(ErrorCode.INVALID, f"input_batch[{i}] holds only padding (pad_token_id={pad})")
        rows.append(row)
    return rows


def bitnet_batch_inference(
    input_batch: Any,
    model_path: PathLike,
    device: Optional[str] = None,
    pad_token_id: int = 0,
    max_output: int = 1024,
    *,
    lengths: Optional[Sequence[int]] = None,
    **generate_kwargs: Any,
) -> np.ndarray:
    """Generate for a batch of prompts in one job; return ``[batch, n]`` int32, padded.

    The batch runs inside the engine as a batch: each decode step is one forward pass for all
    unfinished rows. ``input_batch`` is a 2-D array padded with ``pad_token_id`` (left or
    right) or a list of sequences of different lengths; ``lengths`` gives each row's prompt
    length explicitly instead. Row ``i`` of the result holds the tokens generated for prompt
    ``i``, padded on the right with ``pad_token_id`` up to the longest output. With sampling,
    row ``i`` uses ``seed + i``.
    """
    pad = check_count(pad_token_id, "pad_token_id", 0)
    rows = _batch_rows(input_batch, pad, lengths)
    n = check_count(max_output, "max_output", 0)
    t, k, p, s = check_sampling(
        generate_kwargs.pop("temperature", 0.0), generate_kwargs.pop("top_k", 0),
        generate_kwargs.pop("top_p", 1.0), generate_kwargs.pop("seed", None),
    )
    stop = generate_kwargs.pop("stop_token_ids", None)
    if generate_kwargs:
        raise TypeError(f"unexpected keyword arguments: {sorted(generate_kwargs)}")
    with BitNet(device) as bn:
        bn.load_weights(model_path)
        stops = check_stop_tokens(stop, bn._stop_default)
        from .core import _run_interruptibly

        job = _run_interruptibly(lambda record: bn._dev.submit(rows, n, t, k, p, s, stops, record))
        job.rethrow_if_failed()
        outs = [job.tokens(i) for i in range(len(rows))]
    width = max((len(o) for o in outs), default=0)
    result = np.full((len(rows), width), pad, dtype=np.int32)
    for i, o in enumerate(outs):
        result[i, : len(o)] = o
    return result


class BitNetStream:
    """Streaming generation: a device with a loaded model, yielding tokens as they come.

    >>> with BitNetStream("model.gguf") as stream:                  # doctest: +SKIP
    ...     for token in stream.generate([1, 2, 3], max_tokens=100, stop_token_id=2):
    ...         print(token, end=" ", flush=True)
    """

    def __init__(self, model_path: PathLike, device: Optional[str] = None) -> None:
        self._bn = BitNet(device)
        try:
            self._bn.load_weights(model_path)
        except BaseException:
            self._bn.close()
            raise

    @property
    def device(self) -> BitNet:
        """The underlying :class:`BitNet` (for counters and status)."""
        return self._bn

    def __enter__(self) -> "BitNetStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Abort any running generation and close the device. Idempotent."""
        self._bn.close()

    def generate(
        self,
        tokens: Any,
        max_tokens: int = 1024,
        stop_token_id: Optional[int] = None,
        *,
        poll_ms: int = 100,
        **sampling: Any,
    ) -> Iterator[int]:
        """Yield each generated token (a Python int) as soon as the device produces it.

        Stops after ``stop_token_id`` (which is yielded) or ``max_tokens`` tokens. With
        ``stop_token_id=None`` the model's end-of-sequence tokens stop it. ``sampling``
        takes ``temperature``, ``top_k``, ``top_p``, ``seed``. Leaving the loop early aborts
        the job.
        """
        check_count(max_tokens, "max_tokens", 0)
        check_count(poll_ms, "poll_ms", 1)
        stops = None if stop_token_id is None else [check_count(stop_token_id, "stop_token_id", 0)]
        if "stop_token_ids" in sampling:
            raise TypeError("generate() takes stop_token_id (one id), not stop_token_ids")
        record: List[Any] = []
        try:
            job = self._bn._start(tokens, max_tokens, stop_token_ids=stops, record=record, **sampling)
            yield from _job_tokens(job, poll_ms)
            self._bn._report_job_error(job)
        finally:
            _abort_unfinished(record)
