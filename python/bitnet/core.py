"""The ``BitNet`` device class: one BitNet card (or its simulator) with a loaded model.

Example
-------
>>> from bitnet import BitNet
>>> with BitNet("sim") as bn:                       # doctest: +SKIP
...     bn.load_weights("model.gguf")
...     out = bn.inference([1, 2, 3], max_output=16)
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core
from ._tokens import as_token_array, check_count, check_float, check_sampling, check_stop_tokens
from .errors import BitNetBusyError, BitNetError, BitNetStateError, BitNetValueError, ErrorCode

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

__all__ = ["BitNet", "BitNetStatus", "BitNetPerformance", "BitNetModelInfo", "default_device"]

logger = logging.getLogger("bitnet")
_core._enable_logging()


@dataclass(frozen=True)
class BitNetStatus:
    """Device status register.

    Attributes
    ----------
    state : str
        ``"IDLE"``, ``"LOADING_WEIGHTS"``, ``"RUNNING"``, ``"DMA_TRANSFER"`` or ``"ERROR"``.
    current_layer : int
        The transformer layer the running job is in (0-based; the last one after a job).
    tokens_processed : int
        Tokens (prompt and generated) the current or last job has pushed through the model.
    error_code : int
        The :class:`~bitnet.ErrorCode` of the fault that put the device in ERROR, else 0
        (``HW_ERROR`` for a fault the card reported).
    card_error : int
        With a card fault, the card's own error code (docs/DEVICE_ABI.md section 10: 2 DMA,
        7 HW, 8 FIFO_OVERFLOW, 13 ENGINE, ...), else 0. An extension of the seed fields.
    """

    state: str
    current_layer: int
    tokens_processed: int
    error_code: int
    card_error: int = 0


@dataclass(frozen=True)
class BitNetPerformance:
    """Performance counters.

    ``total_cycles``, ``dma_cycles`` and ``compute_cycles`` are the card's cycle counters
    since the device was opened: on ``"sim"`` and ``"sim+ioctl"`` they come from the cycle
    model of the board profile (docs/DEVICE_ABI.md "Cycle model"), on a card from its
    hardware counters (``counters_source`` says which). ``inference_count`` counts
    generation jobs (finished or aborted).

    Two clocks, named apart, both about the last job:

    * host wall time: ``host_seconds``, and ``tokens_per_second`` = generated tokens /
      ``host_seconds`` (the seed API's meaning: what this machine achieved);
    * card time: ``card_seconds`` = the card cycles the job used / the card clock, and
      ``card_tokens_per_second`` = generated tokens / ``card_seconds`` (on the simulator: the
      modeled speed of the card alone; host work such as attention is not in it).
    """

    total_cycles: int
    dma_cycles: int
    compute_cycles: int
    tokens_per_second: float
    inference_count: int
    host_seconds: float = 0.0
    card_seconds: float = 0.0
    card_tokens_per_second: float = 0.0
    clock_mhz: float = 0.0
    counters_source: str = ""


@dataclass(frozen=True)
class BitNetModelInfo:
    """Shape of the loaded model, read from the model file.

    ``weight_size`` is the number of bytes of all tensors in the file.
    """

    num_layers: int
    hidden_size: int
    vocab_size: int
    max_seq_len: int
    weight_size: int


def _check_real(value: Any, name: str, hi: float) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if not (0.0 < v <= hi):   # also rejects NaN
        raise BitNetValueError(ErrorCode.INVALID, f"{name} must be in (0, {hi:g}], got {value!r}")
    return v


def _check_int(value: Any, name: str, hi: int) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if not (1 <= int(value) <= hi):
        raise BitNetValueError(ErrorCode.INVALID, f"{name} must be in [1, {hi}], got {value!r}")
    return int(value)


def default_device() -> str:
    """The device ``BitNet(device=None)`` opens.

    ``$BITNET_DEVICE`` if set, else the first ``/dev/bitnetN`` node that opens, else ``"sim"``.
    """
    env = os.environ.get("BITNET_DEVICE")
    if env:
        return env
    for node in sorted(glob.glob("/dev/bitnet[0-9]*")):
        try:
            dev = _core.Device(node)
        except BitNetError as e:
            logger.info("skipping %s: %s", node, e)
            continue
        dev.close()
        return node
    return "sim"


def _wait_interruptibly(job: Any) -> None:
    """Wait for a job in short slices so that Ctrl-C (KeyboardInterrupt) gets through; on any
    exception while waiting the job is aborted and waited for before it propagates."""
    try:
        while not job.wait(100):
            pass
    except BaseException:
        job.abort()
        job.wait(-1)
        raise


def _run_interruptibly(start: Callable[[List[Any]], Any]) -> Any:
    """Start a job with ``start(record)`` and wait for it (see :func:`_wait_interruptibly`).

    ``start`` passes ``record`` to ``Device.submit``, which appends the job to it before the
    call returns. Ctrl-C can be raised the moment the interpreter regains control after the
    submit, before its return value is stored anywhere; the job is then still in ``record``
    and is aborted and waited for here, so the device is never left busy with an orphan job.
    """
    record: List[Any] = []
    try:
        job = start(record)
        _wait_interruptibly(job)   # aborts the job itself on an exception while waiting
        return job
    except BaseException:   # raised before the wait began (aborting twice is harmless)
        for job in record:
            job.abort()
            job.wait(-1)
        raise


def _abort_unfinished(record: List[Any]) -> None:
    """Abort and wait for every job in ``record`` that has not finished (a generator's
    ``finally``: the job is in ``record`` from the moment ``Device.submit`` returns, so a
    Ctrl-C or an early exit at any point after the submit cannot orphan it)."""
    for job in record:
        if not job.done:
            job.abort()
            job.wait(-1)


def _job_tokens(job: Any, poll_ms: int) -> Iterator[int]:
    """Yield a running job's generated tokens (ints) as they arrive, until it is done."""
    seen = 0
    while True:
        n = job.wait_for_tokens(seen + 1, poll_ms)
        if n > seen:
            # tokens_from may return more than n: more can arrive between the two calls.
            new = job.tokens_from(seen).tolist()
            seen += len(new)
            for t in new:
                yield int(t)
        elif job.done:
            # Done: every token is in, including any that arrived after the wait returned.
            for t in job.tokens_from(seen).tolist():
                yield int(t)
            return


class BitNet:
    """A BitNet b1.58 accelerator: the FPGA card through its driver, or the simulator.

    Parameters
    ----------
    device : str, optional
        ``"sim"`` for the simulator; ``"sim+ioctl"`` for the simulator behind the emulated
        kernel driver (the exact ioctl/mmap/poll requests a card receives, same results);
        or a card node such as ``"/dev/bitnet0"``. ``None`` picks :func:`default_device`.
    profile : str, optional
        Board profile of the simulator's cycle model: ``"vibee-zcu104"`` (the default),
        ``"vibee-vcu118"`` or ``"kv260"``. A real card reports its own.
    clock_mhz, lanes, lane_width, ddr_gbps, dma_gbps : optional
        Custom cycle-model parameters on top of ``profile`` (simulator only): engine clock
        (MHz), MAC lanes, MACs per lane per cycle, weight-memory bandwidth and host DMA
        bandwidth (GB/s).
    n_threads : int, optional
        Host threads for the simulator's engine and the host side of the model. ``None``
        means ``$BITNET_NUM_THREADS``, else the CPUs this process may use: its affinity mask
        (``taskset``, cpusets) capped by its cgroup's CPU quota (``docker --cpus``,
        Kubernetes CPU limits). More threads than that work, but decode is slower.

    The object is a context manager; :meth:`close` is idempotent and any call after it
    raises :class:`BitNetError` (code ``CLOSED``).
    """

    def __init__(self, device: Optional[str] = None, *, profile: Optional[str] = None,
                 n_threads: Optional[int] = None, clock_mhz: Optional[float] = None,
                 lanes: Optional[int] = None, lane_width: Optional[int] = None,
                 ddr_gbps: Optional[float] = None, dma_gbps: Optional[float] = None) -> None:
        if device is None:
            device = default_device()
        if not isinstance(device, str):
            raise TypeError(f"device must be a string such as 'sim' or '/dev/bitnet0', not {type(device).__name__}")
        if profile is not None and not isinstance(profile, str):
            raise TypeError(f"profile must be a string, not {type(profile).__name__}")
        if profile is not None and profile not in _core.board_profiles():
            raise BitNetValueError(ErrorCode.INVALID, f"unknown board profile {profile!r}; choose one of: "
                                   + ", ".join(_core.board_profiles()))
        custom = dict(
            clock_mhz=_check_real(clock_mhz, "clock_mhz", 10000.0),
            lanes=_check_int(lanes, "lanes", 65536),
            lane_width=_check_int(lane_width, "lane_width", 4096),
            ddr_gbps=_check_real(ddr_gbps, "ddr_gbps", 100000.0),
            dma_gbps=_check_real(dma_gbps, "dma_gbps", 100000.0),
        )
        if device.startswith("/dev/"):
            if any(v is not None for v in custom.values()):
                raise BitNetValueError(ErrorCode.INVALID, "clock_mhz, lanes, lane_width, ddr_gbps and dma_gbps "
                                       "configure the simulator's cycle model; a card reports its own (card_info())")
            if profile is not None:
                logger.warning("profile=%r is ignored for %s: a card reports its own board (card_info())",
                               profile, device)
        threads = 0 if n_threads is None else check_count(n_threads, "n_threads", 1, 1024)
        self._dev = _core.Device(device, profile or "vibee-zcu104", threads, **custom)
        self._device_name = device
        self._job: Optional[Any] = None
        self._job_error_reported = False
        self._stop_default: list = []
        self._user_slots: dict = {}
        self._model_path: Optional[str] = None
        self._tokenizer: "Optional[Tokenizer]" = None
        self._tokenizer_arg: Any = None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Abort any running job, free the card and release the device. Idempotent."""
        dev = getattr(self, "_dev", None)
        if dev is not None and not dev.closed:
            dev.close()

    def __enter__(self) -> "BitNet":
        self._check_open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._dev.closed:
            return f"BitNet({self._device_name!r}, closed)"
        cfg = self._dev.model_config()
        model = os.path.basename(cfg["path"]) if cfg else "no model"
        return f"BitNet({self._device_name!r}, {model})"

    @property
    def device(self) -> str:
        """The device string this object opened."""
        return self._device_name

    def _check_open(self) -> None:
        if self._dev.closed:
            raise BitNetStateError(ErrorCode.CLOSED, "the device is closed; create a new BitNet() to continue")

    def _config(self) -> dict:
        self._check_open()
        cfg = self._dev.model_config()
        if cfg is None:
            self._check_open()   # closed meanwhile by another thread
            if self._dev.busy:   # another thread is loading a model
                raise BitNetBusyError(ErrorCode.BUSY, "the device is busy loading a model; wait for load_weights() to return")
            raise BitNetStateError(ErrorCode.STATE, "no model is loaded; call load_weights(path) first")
        return cfg

    # ------------------------------------------------------------------ weights
    def load_weights(self, model_path: "str | os.PathLike[str]", *, fast_head: bool = False,
                     tokenizer: "Union[str, os.PathLike[str], Tokenizer, None]" = None) -> None:
        """Load a model file (GGUF: ``bitnet``, ``bitnet-b1.58`` or ``bitnet-25``) onto the card.

        ``tokenizer`` (for :meth:`encode`, :meth:`decode`, :meth:`generate_text`) is a
        :class:`~bitnet.tokenizer.Tokenizer` or a path to a Hugging Face ``tokenizer.json`` (or
        its directory). Without it, the tokenizer is built on first use from the file's
        ``tokenizer.ggml.*`` metadata, else from a ``tokenizer.json`` beside the model file.

        ``fast_head=True`` also builds an int8 copy of the output head with per-row error
        bounds. Greedy decoding then scores every vocabulary row with it and re-scores at full
        precision only the rows that could still be the maximum: the tokens are exactly those
        of the exact head, and decode reads about half the head's bytes. Sampling
        (``temperature > 0``) always uses the exact logits. Costs ``vocab * hidden`` bytes.

        Raises :class:`BitNetError` naming the problem for a missing or malformed file; the
        previous model is unloaded either way.
        """
        self._check_open()
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(f"model_path must be a path, not {type(model_path).__name__}")
        path = os.fspath(model_path)
        if not isinstance(fast_head, bool):
            raise TypeError("fast_head must be True or False")
        from .tokenizer import Tokenizer

        if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike, Tokenizer)):
            raise TypeError(f"tokenizer must be a Tokenizer or a path to tokenizer.json, not {type(tokenizer).__name__}")
        self._model_path = None
        self._tokenizer = None
        self._dev.load_model(path, fast_head)
        cfg = self._dev.model_config()
        if cfg is None:   # closed by another thread right after the load
            self._check_open()
            raise BitNetStateError(ErrorCode.STATE, "the model was unloaded while loading; load it again")
        self._stop_default = list(cfg["stop_token_ids"])
        self._model_path = path
        self._tokenizer_arg = tokenizer

    def load_weights_from_array(self, weights: Any, layer_id: int = -1, *, scale: Optional[float] = None) -> int:
        """Load one ternary matrix ``[out_features, in_features]`` into card slot ``layer_id``.

        ``weights`` is int8 (or any integer dtype) holding -1/0/+1, with ``scale`` (default 1.0)
        as the matrix's ``beta``; or a float array whose values are ``t * beta`` (exactly three
        values ``-beta, 0, +beta``), in which case ``beta`` is read from it. ``layer_id=-1``
        picks the lowest free slot id. Returns the slot id. User slots are separate from the
        loaded model's and share the card's weight memory.
        """
        self._check_open()
        layer_id = check_count(layer_id, "layer_id", -1, (1 << 24) - 1)
        if scale is not None:
            scale = check_float(scale, "scale")
        arr = np.asarray(weights)
        if arr.dtype == np.bool_ or arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
        ):
            raise TypeError(f"weights must be an integer or float array, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise BitNetValueError(ErrorCode.INVALID, f"weights must be a non-empty 2-D array [out, in], got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            if arr.min() < -1 or arr.max() > 1:
                raise BitNetValueError(ErrorCode.INVALID, "integer weights must hold only -1, 0 and +1")
            codes = arr.astype(np.int8)
            beta = 1.0 if scale is None else float(scale)
        else:
            w = arr.astype(np.float32)
            if not np.all(np.isfinite(w)):
                raise BitNetValueError(ErrorCode.INVALID, "weights hold NaN or infinity")
            mags = np.unique(np.abs(w[w != 0]))
            if mags.size > 1:
                raise BitNetValueError(
                    ErrorCode.INVALID,
                    "float weights must be ternary values t * beta (one magnitude); got "
                    f"{mags.size} distinct magnitudes. Ternarise first (bitnet.torch_api.BitLinear, or "
                    "absmean: beta = mean|W|, t = clip(round(W / beta), -1, 1))",
                )
            beta = float(mags[0]) if mags.size else 0.0
            codes = np.sign(w).astype(np.int8)
            if scale is not None:
                beta *= float(scale)
        if not np.isfinite(beta) or beta < 0:
            raise BitNetValueError(ErrorCode.INVALID, f"scale must be finite and >= 0, got {beta}")
        if layer_id == -1:
            layer_id = 0
            while layer_id in self._user_slots:
                layer_id += 1
        self._dev.load_user_weights(layer_id, codes, beta)
        self._user_slots[layer_id] = codes.shape
        return layer_id

    def matmul(self, x: Any, layer_id: int, *, return_acc: bool = False) -> Any:
        """``x @ W.T`` on the card for the matrix in slot ``layer_id``, with BitNet numerics.

        ``x`` is float, 1-D ``[in]`` or 2-D ``[batch, in]``; each row is quantised to int8
        (per-token absmax, docs/NUMERICS.md), multiplied on the card and rescaled. Returns
        float32 of shape ``[out]`` or ``[batch, out]``; with ``return_acc=True`` also the int32
        accumulators.
        """
        self._check_open()
        layer_id = check_count(layer_id, "layer_id", 0, (1 << 24) - 1)
        if not isinstance(return_acc, (bool, np.bool_)):
            raise TypeError(f"return_acc must be True or False, not {type(return_acc).__name__}")
        arr = np.asarray(x)
        if arr.dtype == np.bool_ or arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        ):
            raise TypeError(f"x must be a float array, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2):
            raise BitNetValueError(ErrorCode.INVALID, f"x must be 1-D or 2-D, got shape {arr.shape}")
        x2 = np.ascontiguousarray(arr.reshape(1, -1) if arr.ndim == 1 else arr, dtype=np.float32)
        out = self._dev.matmul(layer_id, x2, bool(return_acc))
        if return_acc:
            y, acc = out
            return (y[0], acc[0]) if arr.ndim == 1 else (y, acc)
        return out[0] if arr.ndim == 1 else out

    # ------------------------------------------------------------------ inference
    def inference(
        self,
        input_tokens: Any,
        max_output: int = 1024,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        stop_token_ids: Optional[Iterable[int]] = None,
    ) -> np.ndarray:
        """Generate up to ``max_output`` tokens after ``input_tokens``; return them as int32.

        Only the generated tokens are returned (not the prompt). Greedy by default; set
        ``temperature > 0`` (with optional ``top_k``, ``top_p`` and ``seed``) to sample.
        Generation stops after a token in ``stop_token_ids`` (which is included in the
        output); ``None`` means the model's end-of-sequence tokens, ``[]`` means none.
        It also stops at the model's ``max_seq_len``.

        If the card faults mid-generation this raises :class:`BitNetError` (code
        ``HW_ERROR``, ``card_error`` the card's code), the device stays in ERROR until
        :meth:`reset`, and :meth:`get_output` returns the tokens generated before the fault.
        """
        job = _run_interruptibly(lambda record: self._start(
            input_tokens, max_output, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            stop_token_ids=stop_token_ids, record=record,
        ))
        self._report_job_error(job)
        return job.tokens()

    def inference_async(
        self,
        input_tokens: Any,
        max_output: int = 1024,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        stop_token_ids: Optional[Iterable[int]] = None,
    ) -> None:
        """Start generation and return at once; see :meth:`inference` for the parameters.

        Use :meth:`wait`, :meth:`get_output` and :meth:`abort`. Raises BitNetError (code
        BUSY) if a job is already running.
        """
        self._start(input_tokens, max_output, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                    stop_token_ids=stop_token_ids)

    def _start(self, input_tokens: Any, max_output: int = 1024, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: Optional[int] = None,
               stop_token_ids: Optional[Iterable[int]] = None, record: Optional[List[Any]] = None) -> Any:
        """inference_async(), returning the job it started. Callers that go on to wait for the
        job use this return value, never ``self._job`` read back: on a handle shared by threads
        another thread's job may have replaced ``self._job`` by then (this one can finish and
        free the device before the caller gets the GIL back). ``record``: see
        :func:`_run_interruptibly`."""
        self._config()
        tokens = as_token_array(input_tokens)
        n = check_count(max_output, "max_output", 0)
        t, k, p, s = check_sampling(temperature, top_k, top_p, seed)
        stops = check_stop_tokens(stop_token_ids, self._stop_default)
        job = self._dev.submit([tokens], n, t, k, p, s, stops, record)
        self._job = job
        self._job_error_reported = False
        return job

    def _report_job_error(self, job: Optional[Any] = None) -> None:
        """Raise the error that ended the last job, once: a failed job reports its error to the
        first inference()/get_output() that sees it finished; after that get_output() returns
        the tokens it produced before the failure. ``job``: the job the caller started; when
        another thread has started a newer one on this handle since, its error is raised here
        (to the call that ran it) and the handle's own record is left alone."""
        if job is not None and job is not self._job:
            if job.done:
                job.rethrow_if_failed()
            return
        job = self._job
        if job is not None and job.done and not self._job_error_reported:
            self._job_error_reported = True
            job.rethrow_if_failed()

    def wait(self, timeout_ms: int = -1) -> bool:
        """Wait for the running job; ``False`` if ``timeout_ms`` (>= 0) passed first.

        ``-1`` waits forever. The GIL is released while waiting. Returns ``True`` at once
        when no job was started.
        """
        self._check_open()
        timeout_ms = check_count(timeout_ms, "timeout_ms", -1)
        if self._job is None:
            return True
        if timeout_ms < 0:
            _wait_interruptibly(self._job)
            return True
        return bool(self._job.wait(timeout_ms))

    def get_output(self, max_output: int = 1024) -> np.ndarray:
        """The tokens the last job generated so far (at most ``max_output`` of them).

        When the job ended with an error (a card fault, a timeout) that no call has reported
        yet, this raises it; once reported, it returns the tokens generated before the
        failure (they are never lost).
        """
        self._check_open()
        n = check_count(max_output, "max_output", 0)
        if self._job is None:
            return np.zeros(0, dtype=np.int32)
        self._report_job_error()
        return self._job.tokens()[:n]

    def abort(self) -> None:
        """Stop the running job within one layer; the tokens produced so far stay readable."""
        self._check_open()
        self._dev.abort()

    def reset(self) -> None:
        """Abort any job and bring the device back to IDLE (also from ERROR)."""
        self._check_open()
        self._dev.reset()

    def logits(self, input_tokens: Any) -> np.ndarray:
        """Logits at every position of one forward pass from an empty cache.

        Returns float32 ``[len(input_tokens), vocab_size]``.
        """
        self._config()
        return self._dev.logits(as_token_array(input_tokens))

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self) -> "Tokenizer":
        """The loaded model's :class:`~bitnet.tokenizer.Tokenizer` (built on first use).

        Sources, first found wins: the ``tokenizer=`` argument of :meth:`load_weights`; the
        model file's ``tokenizer.ggml.*`` metadata; ``tokenizer.json`` in the model file's
        directory. Raises :class:`BitNetError` (code STATE) when there is none.
        """
        self._config()
        if self._tokenizer is None:
            self._tokenizer = self._find_tokenizer()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: "Union[Tokenizer, str, os.PathLike[str]]") -> None:
        from .tokenizer import Tokenizer

        self._config()
        if not isinstance(value, Tokenizer):
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"tokenizer must be a Tokenizer or a path, not {type(value).__name__}")
            value = Tokenizer.from_file(value)
        self._tokenizer = value

    def _find_tokenizer(self) -> "Tokenizer":
        from .tokenizer import Tokenizer

        arg, path = self._tokenizer_arg, self._model_path
        if isinstance(arg, Tokenizer):
            return arg
        if arg is not None:
            return Tokenizer.from_file(arg)
        md = _core.GGUFFile(path).metadata()
        if md.get("tokenizer.ggml.tokens"):
            return Tokenizer.from_metadata(md, source=path)
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer.json")
        if os.path.isfile(beside):
            return Tokenizer.from_file(beside)
        raise BitNetStateError(ErrorCode.STATE, f"no tokenizer in {os.path.basename(path)}; pass tokenizer=... "
                               "(a tokenizer.json) to load_weights, or convert the model with its tokenizer.json")

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """Token ids (int32) of ``text`` with the model's tokenizer.

        ``add_special_tokens=True`` adds bos as the model asks (``tokenizer.ggml.add_bos_token``).
        Special-token strings in ``text`` (e.g. ``<|eot_id|>``) become their ids.
        """
        return self.tokenizer.encode(text, add_special_tokens)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """The text of token ids with the model's tokenizer."""
        return self.tokenizer.decode(ids, skip_special_tokens)

    def _prompt_ids(self, prompt: Any, add_special_tokens: bool) -> np.ndarray:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens)
            if ids.size == 0:
                raise BitNetValueError(ErrorCode.INVALID, "prompt encodes to no tokens (empty text and the model adds "
                                       "no bos); pass some text")
            return ids
        return as_token_array(prompt, "prompt")

    def stream_text(
        self,
        prompt: "Union[str, Sequence[int], np.ndarray]",
        max_new_tokens: int = 256,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        stop: "Union[str, Sequence[str], None]" = None,
        stop_token_ids: Optional[Iterable[int]] = None,
        add_special_tokens: bool = True,
        skip_special_tokens: bool = True,
        poll_ms: int = 50,
    ) -> Iterator[str]:
        """Generate from a text prompt, yielding text pieces as the device produces tokens.

        Pieces never split a multi-byte character: bytes of an incomplete UTF-8 sequence are
        held back until the token that completes it arrives. ``prompt`` is a string (encoded
        with bos as the model asks; ``add_special_tokens=False`` encodes it bare) or token ids
        (used as they are, e.g. from :meth:`~bitnet.tokenizer.Tokenizer.encode_chat`).

        Generation ends after ``max_new_tokens`` tokens, at a stop token (``stop_token_ids``;
        ``None`` means the model's end-of-sequence tokens), or at the first occurrence of a
        ``stop`` string; neither the stop token nor the stop string is part of the text (text
        that might begin a stop string is held back until it is decided). Special tokens are
        left out of the text unless ``skip_special_tokens=False``. Sampling parameters are
        :meth:`inference`'s. Leaving the loop early aborts the job.
        """
        ids = self._prompt_ids(prompt, add_special_tokens)
        tok = self.tokenizer
        stops: List[str] = [stop] if isinstance(stop, str) else list(stop or [])
        for i, s in enumerate(stops):
            if not isinstance(s, str) or not s:
                raise BitNetValueError(ErrorCode.INVALID, f"stop[{i}] must be a non-empty string, got {s!r}")
        stop_ids = set(check_stop_tokens(stop_token_ids, self._stop_default))
        decoder = tok.incremental_decoder(skip_special_tokens)
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""

        def cut(text: str) -> int:
            hits = [text.find(s) for s in stops]
            hits = [h for h in hits if h >= 0]
            return min(hits) if hits else -1

        record: List[Any] = []
        try:
            job = self._start(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                              stop_token_ids=sorted(stop_ids), record=record)
            for t in _job_tokens(job, poll_ms):
                if t in stop_ids:
                    break          # the job ends here too: a stop token is its last token
                pending += decoder.push(t)
                k = cut(pending) if stops else -1
                if k >= 0:
                    if k:
                        yield pending[:k]
                    return
                if len(pending) > hold:
                    yield pending[:len(pending) - hold]
                    pending = pending[len(pending) - hold:]
            job.wait(-1)
            job.rethrow_if_failed()
            pending += decoder.flush()
            k = cut(pending) if stops else -1
            if k >= 0:
                pending = pending[:k]
            if pending:
                yield pending
        finally:
            _abort_unfinished(record)

    def generate_text(
        self,
        prompt: "Union[str, Sequence[int], np.ndarray]",
        max_new_tokens: int = 256,
        **kwargs: Any,
    ) -> str:
        """Generate from a text prompt and return the generated text (not the prompt).

        Takes :meth:`stream_text`'s parameters (``temperature``, ``top_k``, ``top_p``,
        ``seed``, ``stop``, ``stop_token_ids``, ``add_special_tokens``,
        ``skip_special_tokens``) and returns the concatenation of its pieces.
        """
        return "".join(self.stream_text(prompt, max_new_tokens, **kwargs))

    # ------------------------------------------------------------------ registers
    @property
    def status(self) -> BitNetStatus:
        """The device status register (:class:`BitNetStatus`)."""
        self._check_open()
        s = self._dev.status()
        return BitNetStatus(s["state"], int(s["current_layer"]), int(s["tokens_processed"]), int(s["error_code"]),
                            int(s["card_error"]))

    @property
    def performance(self) -> BitNetPerformance:
        """Performance counters (:class:`BitNetPerformance`)."""
        self._check_open()
        p = self._dev.perf()
        return BitNetPerformance(
            int(p["total_cycles"]), int(p["dma_cycles"]), int(p["compute_cycles"]),
            float(p["tokens_per_second"]), int(p["inference_count"]),
            host_seconds=float(p["last_job_host_seconds"]), card_seconds=float(p["last_job_card_seconds"]),
            card_tokens_per_second=float(p["card_tokens_per_second"]), clock_mhz=float(p["clock_mhz"]),
            counters_source=str(p["counters_source"]),
        )

    def performance_details(self) -> dict:
        """Every counter the device keeps, as a dict.

        Card counters (``total_cycles``, ``dma_cycles``, ``compute_cycles``, ``commands``,
        ``matmuls``, ``macs``, ``dma_bytes``, ``weight_bytes_read``; docs/DEVICE_ABI.md),
        ``counters_source`` (``"cycle model"`` or ``"hardware"``), ``clock_mhz`` and
        ``card_seconds_total``; about the last job: ``last_job_host_seconds`` and
        ``host_tokens_per_second`` (host wall time), ``last_job_card_cycles``,
        ``last_job_card_seconds`` and ``card_tokens_per_second`` (card time),
        ``last_job_tokens``; totals ``inference_count``, ``tokens_generated``,
        ``tokens_prefilled``; fast-head statistics ``head_calls``, ``head_rescored``.
        ``tokens_per_second`` and ``last_job_seconds`` are the host figures under their seed names.
        """
        self._check_open()
        return dict(self._dev.perf())

    @property
    def model_info(self) -> BitNetModelInfo:
        """Shape of the loaded model (:class:`BitNetModelInfo`)."""
        c = self._config()
        return BitNetModelInfo(
            int(c["num_layers"]), int(c["hidden_size"]), int(c["vocab_size"]), int(c["max_seq_len"]),
            int(c["weight_size"]),
        )

    def model_config(self) -> dict:
        """The full configuration the loader read (arch, activation, rope, heads, notes ...)."""
        return dict(self._config())

    def card_info(self) -> dict:
        """Transport, kernel, board profile and weight-memory use of the card."""
        self._check_open()
        return dict(self._dev.card_info())

    @property
    def is_busy(self) -> bool:
        """True while a job runs on the device."""
        self._check_open()
        return bool(self._dev.busy)
