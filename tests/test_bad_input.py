"""Bad input to every public function and method (issue 7, "never crash, never lose").

One table of cases: each calls one public entry point with one bad argument (wrong type, wrong
dtype, wrong shape, empty, out of range, NaN, wrong state ...) and names the exception it must
raise (BitNetError or TypeError/ValueError, all typed) and a pattern its message must match
(the argument's name). After every case a shared device must still produce exactly the tokens
of a clean run, so no bad call leaves anything behind.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import bitnet
from bitnet import BitNet, BitNetError, BitNetStream, ErrorCode
from bitnet.errors import BitNetStateError
from bitnet.models import make_random_model
from bitnet.numpy_api import bitnet_batch_inference, bitnet_inference, pad_sequences, tokens_to_numpy, unpad_sequence

PROMPT = [3, 1, 4, 1, 5]
VOCAB = 256
CTX = 64


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    model = str(make_random_model(d / "tiny.gguf", preset="tiny", seed=21, num_hidden_layers=1, vocab_size=VOCAB,
                                  max_position_embeddings=CTX))
    notgguf = d / "not-a-model.gguf"
    notgguf.write_bytes(b"this is not a GGUF file" * 10)
    bn = BitNet("sim", n_threads=1)
    bn.load_weights(model)
    ref = bn.inference(PROMPT, max_output=6, stop_token_ids=[])
    slot = bn.load_weights_from_array(np.array([[1, 0, -1, 1], [0, 1, 1, -1]], np.int8), layer_id=3)
    closed = BitNet("sim", n_threads=1)
    closed.close()
    empty = BitNet("sim", n_threads=1)
    stream = BitNetStream(model, device="sim")
    ns = SimpleNamespace(bn=bn, model=model, ref=ref, slot=slot, closed=closed, empty=empty, stream=stream,
                         dir=d, notgguf=str(notgguf))
    yield ns
    for b in (bn, empty):
        b.close()
    stream.close()


def _ok_after(ctx):
    """The shared device still works, bit for bit. (A failed load_weights unloads the previous
    model, as documented; loading it again must work.)"""
    bn = ctx.bn
    if bn._dev.model_config() is None:
        bn.load_weights(ctx.model)
    if bn.status.state == "ERROR":
        pytest.fail(f"a bad argument left the device in ERROR: {bn.status}")
    assert not bn.is_busy
    assert np.array_equal(bn.inference(PROMPT, max_output=6, stop_token_ids=[]), ctx.ref)
    assert np.allclose(bn.matmul(np.ones(4, np.float32), ctx.slot), [1.0, 1.0])


V = ValueError   # BitNetValueError is a ValueError (and a BitNetError, code INVALID)
T = TypeError
S = BitNetStateError
F = FileNotFoundError

# Token arguments: (id, value, exception, message pattern with {name} for the argument's name)
BAD_TOKENS = [
    ("str", "hello", T, "{name}"),
    ("bytes", b"\x01\x02", T, "{name}"),
    ("none", None, T, "{name}"),
    ("float-scalar", 3.5, T, "{name}"),
    ("int-scalar", 7, T, "{name}"),
    ("dict", {1: 2}, T, "{name}"),
    ("float-list", [1, 2.5], T, r"{name}\[1\]"),
    ("bool-list", [True, False], T, r"{name}\[0\]"),
    ("str-list", [1, "2"], T, r"{name}\[1\]"),
    ("float-dtype", np.array([1.0, 2.0]), T, "{name}.*dtype float64"),
    ("object-dtype", np.array([1, 2], dtype=object), T, "{name}.*dtype object"),
    ("bool-dtype", np.array([True, False]), T, "{name}.*dtype bool"),
    ("0-D", np.array(5), V, "{name} must be 1-D"),
    ("2-D", np.ones((2, 3), np.int32), V, "{name} must be 1-D"),
    ("empty-list", [], V, "{name} is empty"),
    ("empty-array", np.zeros(0, np.int64), V, "{name} is empty"),
    ("negative", [1, -1], V, "{name}.*negative"),
    ("beyond-int32", [1, 2**40], V, "{name}.*beyond int32"),
    ("vocab", [1, VOCAB], V, r"{name}\[1\] = 256 is not a token id"),
    ("too-long", [1] * (CTX + 1), V, "{name} has 65 tokens.*max_seq_len 64"),
]
# Tokens that only the device can judge (vocabulary, context): functions without a model skip them.
DEVICE_TOKEN_IDS = {"vocab", "too-long"}

TOKEN_TARGETS = {
    "inference": (lambda c, v: c.bn.inference(v, 4), "input_tokens"),
    "inference_async": (lambda c, v: c.bn.inference_async(v, 4), "input_tokens"),
    "logits": (lambda c, v: c.bn.logits(v), "input_tokens"),
    "bitnet_inference": (lambda c, v: bitnet_inference(v, c.model, device="sim", max_output=2), "input_tokens"),
    "stream.generate": (lambda c, v: list(c.stream.generate(v, 2)), "input_tokens"),
    "tokens_to_numpy": (lambda c, v: tokens_to_numpy(v), "tokens"),
}

CASES = []
for target, (fn, name) in TOKEN_TARGETS.items():
    for tid, value, exc, pat in BAD_TOKENS:
        if target == "tokens_to_numpy" and tid in DEVICE_TOKEN_IDS:
            continue
        CASES.append((f"{target}-{tid}", (lambda f, v: lambda c: f(c, v))(fn, value), exc, pat.format(name=name)))


def case(id_, fn, exc, pat):
    CASES.append((id_, fn, exc, pat))


# --- max_output / counts ------------------------------------------------------------------
for tgt, call in {
    "inference": lambda c, n: c.bn.inference(PROMPT, n),
    "inference_async": lambda c, n: c.bn.inference_async(PROMPT, n),
    "get_output": lambda c, n: c.bn.get_output(n),
    "bitnet_inference": lambda c, n: bitnet_inference(PROMPT, c.model, device="sim", max_output=n),
    "bitnet_batch_inference": lambda c, n: bitnet_batch_inference([PROMPT], c.model, device="sim", max_output=n),
}.items():
    case(f"{tgt}-max_output-negative", (lambda f: lambda c: f(c, -1))(call), V, r"max_output must be in \[0, ")
    case(f"{tgt}-max_output-huge", (lambda f: lambda c: f(c, 2**40))(call), V, r"max_output must be in \[0, 2147483647\]")
    case(f"{tgt}-max_output-float", (lambda f: lambda c: f(c, 4.0))(call), T, "max_output must be an integer")
    case(f"{tgt}-max_output-str", (lambda f: lambda c: f(c, "4"))(call), T, "max_output must be an integer")
    case(f"{tgt}-max_output-bool", (lambda f: lambda c: f(c, True))(call), T, "max_output must be an integer")
    case(f"{tgt}-max_output-none", (lambda f: lambda c: f(c, None))(call), T, "max_output must be an integer")
case("stream-max_tokens-negative", lambda c: list(c.stream.generate(PROMPT, -1)), V, "max_tokens")
case("stream-max_tokens-str", lambda c: list(c.stream.generate(PROMPT, "3")), T, "max_tokens")
case("stream-poll_ms-zero", lambda c: list(c.stream.generate(PROMPT, 2, poll_ms=0)), V, "poll_ms")
case("stream-poll_ms-str", lambda c: list(c.stream.generate(PROMPT, 2, poll_ms="x")), T, "poll_ms")
case("stream-stop-str", lambda c: list(c.stream.generate(PROMPT, 2, stop_token_id="x")), T, "stop_token_id")
case("stream-stop-negative", lambda c: list(c.stream.generate(PROMPT, 2, stop_token_id=-3)), V, "stop_token_id")
case("wait-timeout-str", lambda c: c.bn.wait("1"), T, "timeout_ms")
case("wait-timeout-float", lambda c: c.bn.wait(1.5), T, "timeout_ms")
case("wait-timeout-below-minus-1", lambda c: c.bn.wait(-2), V, "timeout_ms")

# --- sampling parameters ------------------------------------------------------------------
SAMPLING = [
    ("temperature-nan", dict(temperature=math.nan), V, "temperature"),
    ("temperature-negative", dict(temperature=-0.5), V, "temperature"),
    ("temperature-inf", dict(temperature=math.inf), V, "temperature"),
    ("temperature-str", dict(temperature="hot"), T, "temperature"),
    ("temperature-none", dict(temperature=None), T, "temperature"),
    ("top_p-zero", dict(temperature=1.0, top_p=0.0), V, "top_p"),
    ("top_p-above-1", dict(temperature=1.0, top_p=1.5), V, "top_p"),
    ("top_p-negative", dict(temperature=1.0, top_p=-0.1), V, "top_p"),
    ("top_p-nan", dict(temperature=1.0, top_p=math.nan), V, "top_p"),
    ("top_k-negative", dict(temperature=1.0, top_k=-1), V, "top_k"),
    ("top_k-float", dict(temperature=1.0, top_k=2.5), T, "top_k"),
    ("seed-negative", dict(temperature=1.0, seed=-1), V, "seed"),
    ("seed-float", dict(temperature=1.0, seed=1.5), T, "seed"),
    ("stop-str", dict(stop_token_ids=["a"]), T, r"stop_token_ids\[0\]"),
    ("stop-negative", dict(stop_token_ids=[-4]), V, r"stop_token_ids\[0\]"),
    ("stop-float", dict(stop_token_ids=[1.0]), T, r"stop_token_ids\[0\]"),
    ("stop-not-iterable", dict(stop_token_ids=2.5), T, "stop_token_ids"),
    ("unknown-kwarg", dict(temprature=0.5), T, "temprature"),
]
for sid, kw, exc, pat in SAMPLING:
    case(f"inference-{sid}", (lambda k: lambda c: c.bn.inference(PROMPT, 2, **k))(kw), exc, pat)
    if not sid.startswith("stop"):   # the stream takes one stop_token_id (cases above)
        case(f"stream-{sid}", (lambda k: lambda c: list(c.stream.generate(PROMPT, 2, **k)))(kw), exc, pat)
    case(f"batch-{sid}", (lambda k: lambda c: bitnet_batch_inference([PROMPT], c.model, device="sim", max_output=2, **k))(kw),
         exc, pat)

# --- batches and token helpers ------------------------------------------------------------
BATCH = [
    ("str", "abc", T, "input_batch"),
    ("none", None, T, "input_batch"),
    ("1-D", np.array([1, 2, 3]), V, "input_batch must be 2-D"),
    ("3-D", np.ones((1, 2, 3), np.int32), V, "input_batch must be 2-D"),
    ("float", np.ones((2, 3)), T, "input_batch.*dtype float64"),
    ("object", np.array([[1, 2]], dtype=object), T, "input_batch.*dtype object"),
    ("empty", [], V, "input_batch is empty"),
    ("empty-row", [[1, 2], []], V, r"input_batch\[1\] is empty"),
    ("only-padding", np.array([[1, 2], [0, 0]]), V, r"input_batch\[1\] holds only padding"),
    ("negative", [[1, -2]], V, r"input_batch\[0\].*negative"),
    ("vocab", [[1, 2], [VOCAB]], V, r"input_batch\[1\]\[0\] = 256 is not a token id"),
    ("too-long", [[1] * (CTX + 1)], V, r"max_seq_len"),
    ("float-in-list", [[1, 2.5]], T, r"input_batch\[0\]\[1\]"),
]
for bid, value, exc, pat in BATCH:
    case(f"batch-{bid}", (lambda v: lambda c: bitnet_batch_inference(v, c.model, device="sim", max_output=2))(value),
         exc, pat)
case("batch-pad-negative", lambda c: bitnet_batch_inference([PROMPT], c.model, device="sim", pad_token_id=-1), V,
     "pad_token_id")
case("batch-pad-str", lambda c: bitnet_batch_inference([PROMPT], c.model, device="sim", pad_token_id="0"), T,
     "pad_token_id")
case("batch-lengths-mismatch", lambda c: bitnet_batch_inference([PROMPT], c.model, device="sim", lengths=[1, 2]), V,
     "lengths")
case("batch-lengths-zero", lambda c: bitnet_batch_inference([PROMPT], c.model, device="sim", lengths=[0]), V,
     r"lengths\[0\]")
case("batch-lengths-too-long", lambda c: bitnet_batch_inference([PROMPT], c.model, device="sim", lengths=[99]), V,
     r"lengths\[0\]")
case("pad_sequences-str", lambda c: pad_sequences("abc"), T, "sequences")
case("pad_sequences-empty", lambda c: pad_sequences([]), V, "sequences is empty")
case("pad_sequences-float-row", lambda c: pad_sequences([[1, 2], [1.5]]), T, r"sequences\[1\]\[0\]")
case("pad_sequences-2d-row", lambda c: pad_sequences([np.ones((2, 2), np.int32)]), V, r"sequences\[0\] must be 1-D")
case("pad_sequences-max_len-zero", lambda c: pad_sequences([[1]], max_len=0), V, "max_len")
case("pad_sequences-max_len-short", lambda c: pad_sequences([[1, 2, 3]], max_len=2), V, "max_len=2")
case("pad_sequences-pad-negative", lambda c: pad_sequences([[1]], pad_token_id=-1), V, "pad_token_id")
case("unpad_sequence-2d", lambda c: unpad_sequence(np.ones((2, 2), np.int32)), V, "sequence must be 1-D")
case("unpad_sequence-float", lambda c: unpad_sequence(np.array([1.0, 0.0])), T, "sequence.*dtype float64")
case("unpad_sequence-pad-str", lambda c: unpad_sequence([1, 0], pad_token_id="0"), T, "pad_token_id")

# --- weights and the bare matrix engine ---------------------------------------------------
W = np.array([[1, 0], [-1, 1]], np.int8)
WEIGHTS = [
    ("str", "abc", T, "weights"),
    ("object", np.array([[1, 0]], dtype=object), T, "weights.*dtype object"),
    ("bool", np.array([[True, False]]), T, "weights.*dtype bool"),
    ("0-D", np.array(1), V, "weights must be a non-empty 2-D"),
    ("1-D", np.array([1, 0, -1]), V, "weights must be a non-empty 2-D"),
    ("3-D", np.ones((1, 2, 2), np.int8), V, "weights must be a non-empty 2-D"),
    ("empty", np.zeros((0, 4), np.int8), V, "weights must be a non-empty 2-D"),
    ("code-2", np.array([[2, 0]], np.int8), V, "weights must hold only -1, 0 and \\+1"),
    ("nan", np.array([[np.nan, 1.0]]), V, "weights hold NaN"),
    ("two-magnitudes", np.array([[0.5, 1.0]]), V, "ternary values"),
]
for wid, value, exc, pat in WEIGHTS:
    case(f"load_weights_from_array-{wid}", (lambda v: lambda c: c.bn.load_weights_from_array(v, layer_id=9))(value), exc, pat)
case("load_weights_from_array-layer_id-negative", lambda c: c.bn.load_weights_from_array(W, layer_id=-2), V, "layer_id")
case("load_weights_from_array-layer_id-huge", lambda c: c.bn.load_weights_from_array(W, layer_id=2**24), V, "layer_id")
case("load_weights_from_array-layer_id-str", lambda c: c.bn.load_weights_from_array(W, layer_id="1"), T, "layer_id")
case("load_weights_from_array-scale-nan", lambda c: c.bn.load_weights_from_array(W, layer_id=9, scale=math.nan), V, "scale")
case("load_weights_from_array-scale-negative", lambda c: c.bn.load_weights_from_array(W, layer_id=9, scale=-1.0), V,
     "scale")
case("load_weights_from_array-scale-str", lambda c: c.bn.load_weights_from_array(W, layer_id=9, scale="1"), T, "scale")
X = np.ones(4, np.float32)
case("matmul-x-str", lambda c: c.bn.matmul("abc", c.slot), T, "x must be a float array")
case("matmul-x-object", lambda c: c.bn.matmul(np.array([1.0, 2.0, 3.0, 4.0], dtype=object), c.slot), T, "x must")
case("matmul-x-bool", lambda c: c.bn.matmul(np.ones(4, bool), c.slot), T, "x must")
case("matmul-x-0-D", lambda c: c.bn.matmul(np.float32(1.0), c.slot), V, "x must be 1-D or 2-D")
case("matmul-x-3-D", lambda c: c.bn.matmul(np.ones((1, 1, 4), np.float32), c.slot), V, "x must be 1-D or 2-D")
case("matmul-x-empty", lambda c: c.bn.matmul(np.zeros((0, 4), np.float32), c.slot), V, "x has no rows")
case("matmul-x-features", lambda c: c.bn.matmul(np.ones(5, np.float32), c.slot), V, "x has 5 features.*expects 4")
case("matmul-x-nan", lambda c: c.bn.matmul(np.array([1, np.nan, 0, 0], np.float32), c.slot), V, "x holds a non-finite")
case("matmul-x-inf", lambda c: c.bn.matmul(np.array([1, np.inf, 0, 0], np.float32), c.slot), V, "x holds a non-finite")
case("matmul-layer_id-empty", lambda c: c.bn.matmul(X, 77), V, "no weights loaded for layer_id 77")
case("matmul-layer_id-negative", lambda c: c.bn.matmul(X, -1), V, "layer_id")
case("matmul-layer_id-str", lambda c: c.bn.matmul(X, "3"), T, "layer_id")
case("matmul-return_acc-str", lambda c: c.bn.matmul(X, c.slot, return_acc="yes"), T, "return_acc")

# --- files, devices, constructors ---------------------------------------------------------
case("load_weights-int", lambda c: c.bn.load_weights(123), T, "model_path")
case("load_weights-none", lambda c: c.bn.load_weights(None), T, "model_path")
case("load_weights-fast_head-str", lambda c: c.bn.load_weights(c.model, fast_head="yes"), T, "fast_head")
case("load_weights-missing", lambda c: c.bn.load_weights(str(c.dir / "missing.gguf")), F, "missing.gguf")
case("load_weights-directory", lambda c: c.bn.load_weights(str(c.dir)), BitNetError, str)
case("load_weights-not-gguf", lambda c: c.bn.load_weights(c.notgguf), BitNetError, "not-a-model.gguf|GGUF")
case("bitnet_inference-missing-model", lambda c: bitnet_inference(PROMPT, str(c.dir / "nope.gguf"), device="sim"), F,
     "nope.gguf")
case("bitnet_inference-model-int", lambda c: bitnet_inference(PROMPT, 5, device="sim"), T, "model_path")
case("stream-missing-model", lambda c: BitNetStream(str(c.dir / "nope.gguf"), device="sim"), F, "nope.gguf")
case("BitNet-device-int", lambda c: BitNet(5), T, "device")
case("BitNet-device-unknown", lambda c: BitNet("gpu0"), V, "unknown device 'gpu0'")
case("BitNet-profile-unknown", lambda c: BitNet("sim", profile="zcu999"), V, "profile")
case("BitNet-profile-int", lambda c: BitNet("sim", profile=3), T, "profile")
case("BitNet-n_threads-zero", lambda c: BitNet("sim", n_threads=0), V, "n_threads")
case("BitNet-n_threads-str", lambda c: BitNet("sim", n_threads="2"), T, "n_threads")
case("BitNet-clock-negative", lambda c: BitNet("sim", clock_mhz=-1), V, "clock_mhz")
case("BitNet-clock-nan", lambda c: BitNet("sim", clock_mhz=math.nan), V, "clock_mhz")
case("BitNet-lanes-zero", lambda c: BitNet("sim", lanes=0), V, "lanes")
case("BitNet-lanes-float", lambda c: BitNet("sim", lanes=1.5), T, "lanes")
case("BitNet-ddr-str", lambda c: BitNet("sim", ddr_gbps="fast"), T, "ddr_gbps")
case("BitNet-missing-node", lambda c: BitNet("/dev/bitnet-none9"), F, "/dev/bitnet-none9")

# --- wrong state: no model loaded, device closed ------------------------------------------
NO_MODEL = {
    "inference": lambda b: b.inference(PROMPT, 2),
    "inference_async": lambda b: b.inference_async(PROMPT, 2),
    "logits": lambda b: b.logits(PROMPT),
    "model_info": lambda b: b.model_info,
    "model_config": lambda b: b.model_config(),
}
for name, fn in NO_MODEL.items():
    case(f"no-model-{name}", (lambda f: lambda c: f(c.empty))(fn), S, "no model is loaded; call load_weights")
case("no-model-matmul", lambda c: c.empty.matmul(X, 0), V, "no weights loaded for layer_id 0")
CLOSED = dict(NO_MODEL)
CLOSED.update({
    "load_weights": lambda b: b.load_weights("x.gguf"),
    "load_weights_from_array": lambda b: b.load_weights_from_array(W),
    "matmul": lambda b: b.matmul(X, 0),
    "wait": lambda b: b.wait(),
    "get_output": lambda b: b.get_output(),
    "abort": lambda b: b.abort(),
    "reset": lambda b: b.reset(),
    "status": lambda b: b.status,
    "performance": lambda b: b.performance,
    "performance_details": lambda b: b.performance_details(),
    "card_info": lambda b: b.card_info(),
    "is_busy": lambda b: b.is_busy,
    "enter": lambda b: b.__enter__(),
})
for name, fn in CLOSED.items():
    case(f"closed-{name}", (lambda f: lambda c: f(c.closed))(fn), S, "closed")


def _check(ctx, fn, exc, pat):
    with pytest.raises(exc) as e:
        fn(ctx)
    err = e.value
    assert isinstance(err, (BitNetError, TypeError, ValueError)), type(err)
    if isinstance(err, BitNetError):
        assert err.code in set(ErrorCode), err.code
        if isinstance(err, ValueError):
            assert err.code == ErrorCode.INVALID
    if pat is not str:
        assert err.args and __import__("re").search(pat, str(err)), f"message {str(err)!r} does not match {pat!r}"
    _ok_after(ctx)


@pytest.mark.parametrize("fn,exc,pat", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(ctx, fn, exc, pat):
    _check(ctx, fn, exc, pat)


def test_bad_input_matrix_size():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 250


def test_max_output_zero_is_an_empty_result(ctx):
    """0 is not an error: nothing is generated (the device still does the prompt's checks)."""
    out = ctx.bn.inference(PROMPT, 0)
    assert out.dtype == np.int32 and out.shape == (0,)
    with pytest.raises(ValueError, match="input_tokens"):
        ctx.bn.inference([VOCAB], 0)
    _ok_after(ctx)


def test_max_output_beyond_the_context_is_capped(ctx):
    out = ctx.bn.inference(PROMPT, 2**31 - 1, stop_token_ids=[])
    assert out.shape == (CTX - len(PROMPT),)
    _ok_after(ctx)


def test_bad_input_while_a_job_runs_leaves_the_job_alone(ctx):
    bn = ctx.bn
    bn.inference_async(PROMPT, CTX, stop_token_ids=[])
    for fn in (lambda: bn.inference([-1]), lambda: bn.logits("x"), lambda: bn.matmul(np.ones(5, np.float32), ctx.slot),
               lambda: bn.load_weights_from_array(np.ones((1, 1), np.float64) * np.nan), lambda: bn.wait("x")):
        with pytest.raises((TypeError, ValueError)):
            fn()
    assert bn.wait(60_000)
    assert bn.get_output().shape == (CTX - len(PROMPT),)
    _ok_after(ctx)


# --- PyTorch glue ---------------------------------------------------------------------------


def _torch_cases():
    try:
        import torch as th  # noqa: F401
    except ImportError:
        return []
    import torch as th

    good = th.tensor([PROMPT])
    out = []

    def tc(id_, fn, exc, pat):
        out.append(pytest.param(fn, exc, pat, id=id_))

    ids_bad = [
        ("str", "abc", T, "input_ids"),
        ("none", None, T, "input_ids"),
        ("float-tensor", th.tensor([[1.0, 2.0]]), T, "input_ids"),
        ("bool-tensor", th.tensor([[True, False]]), T, "input_ids"),
        ("0-D", th.tensor(3), V, "input_ids"),
        ("3-D", th.ones(1, 1, 3, dtype=th.long), V, "input_ids"),
        ("empty", th.zeros(1, 0, dtype=th.long), V, "input_ids"),
        ("negative", th.tensor([[1, -1]]), V, "input_ids"),
        ("vocab", th.tensor([[1, VOCAB]]), V, "not a token id"),
        ("too-long", th.ones(1, CTX + 1, dtype=th.long), V, "max_seq_len"),
        ("float-list", [[1, 2.5]], T, "input_ids"),
    ]
    for iid, v, exc, pat in ids_bad:
        tc(f"module.forward-{iid}", (lambda v: lambda c: c.module(v, max_length=2))(v), exc, pat)
        tc(f"module.generate-{iid}", (lambda v: lambda c: c.module.generate(v, max_new_tokens=2))(v), exc, pat)
        tc(f"causal_lm.forward-{iid}", (lambda v: lambda c: c.lm(v))(v), exc, pat)
    tc("module.forward-max_length-negative", lambda c: c.module(good, max_length=-1), V, "max_length")
    tc("module.forward-max_length-float", lambda c: c.module(good, max_length=2.0), T, "max_length")
    tc("module.forward-mask-shape", lambda c: c.module(good, attention_mask=th.ones(1, 2, dtype=th.long)), V,
       "attention_mask")
    tc("module.forward-mask-float", lambda c: c.module(good, attention_mask=th.ones(1, 5)), T, "attention_mask")
    tc("module.forward-mask-values", lambda c: c.module(good, attention_mask=th.full((1, 5), 2)), V, "attention_mask")
    tc("module.forward-mask-str", lambda c: c.module(good, attention_mask="all"), T, "attention_mask")
    tc("module.forward-mask-all-zero", lambda c: c.module(good, attention_mask=th.zeros(1, 5, dtype=th.long)), V,
       "attention_mask")
    tc("module.forward-temperature-nan", lambda c: c.module(good, temperature=math.nan), V, "temperature")
    tc("module.forward-top_p", lambda c: c.module(good, temperature=1.0, top_p=2.0), V, "top_p")
    tc("module.forward-pad-negative", lambda c: c.module(good, pad_token_id=-1), V, "pad_token_id")
    tc("module.forward-unknown-kwarg", lambda c: c.module(good, temprature=1.0), T, "temprature")
    tc("module.generate-max_new_tokens-negative", lambda c: c.module.generate(good, max_new_tokens=-1), V, "max_new_tokens")
    tc("module.generate-max_new_tokens-str", lambda c: c.module.generate(good, max_new_tokens="2"), T, "max_new_tokens")
    tc("module.generate-do_sample-str", lambda c: c.module.generate(good, do_sample="yes"), T, "do_sample")
    tc("module.generate-temperature-zero", lambda c: c.module.generate(good, do_sample=True, temperature=0.0), V,
       "temperature")
    tc("module.generate-temperature-nan", lambda c: c.module.generate(good, do_sample=True, temperature=math.nan), V,
       "temperature")
    tc("module.generate-temperature-str", lambda c: c.module.generate(good, do_sample=True, temperature="hot"), T,
       "temperature")
    tc("module.generate-top_p", lambda c: c.module.generate(good, do_sample=True, top_p=0.0), V, "top_p")
    tc("module.generate-top_k", lambda c: c.module.generate(good, do_sample=True, top_k=-3), V, "top_k")
    tc("module.generate-seed", lambda c: c.module.generate(good, do_sample=True, seed=-3), V, "seed")
    tc("module.generate-eos-str", lambda c: c.module.generate(good, eos_token_id="x"), T, "eos_token_id")
    tc("module.generate-pad-negative", lambda c: c.module.generate(good, pad_token_id=-2), V, "pad_token_id")
    tc("module.generate-beams", lambda c: c.module.generate(good, num_beams=4), T, "num_beams")
    tc("causal_lm.forward-labels-shape", lambda c: c.lm(good, labels=th.ones(1, 3, dtype=th.long)), V, "labels")
    tc("causal_lm.forward-labels-float", lambda c: c.lm(good, labels=th.ones(1, 5)), T, "labels")
    tc("causal_lm.forward-unknown-kwarg", lambda c: c.lm(good, output_attentions=True), T, "output_attentions")
    tc("causal_lm.from_pretrained-missing", lambda c: bitnet.BitNetForCausalLM.from_pretrained(str(c.dir / "none")), F,
       "none")
    tc("causal_lm.from_pretrained-int", lambda c: bitnet.BitNetForCausalLM.from_pretrained(5), T, "model_path")
    tc("module-device-int", lambda c: bitnet.BitNetModule(device=7), T, "device")
    tc("module-missing-model", lambda c: bitnet.BitNetModule("sim", str(c.dir / "none.gguf")), F, "none.gguf")
    tc("to_device-not-a-module", lambda c: bitnet.to_device("linear", "sim"), T, "module")
    tc("to_device-device-int", lambda c: bitnet.to_device(bitnet.BitLinear(4, 2), 5), T, "device")
    tc("to_device-closed-device", lambda c: bitnet.to_device(bitnet.BitLinear(4, 2), c.closed), S, "closed")
    tc("export-not-a-module", lambda c: bitnet.export("model", str(c.dir / "x.gguf")), T, "model")
    tc("export-bad-type", lambda c: bitnet.export(c.tiny_torch, str(c.dir / "x.gguf"), type="q4_0"), V, "type")
    tc("export-path-int", lambda c: bitnet.export(c.tiny_torch, 5), T, "path")
    tc("bitlinear-device-wrong-features", lambda c: c.dev_linear(th.ones(1, 5)), V, "in_features")
    tc("bitlinear-device-int-input", lambda c: c.dev_linear(th.ones(1, 4, dtype=th.long)), T, "float tensor")
    return out


@pytest.fixture(scope="module")
def tctx(ctx):
    th = pytest.importorskip("torch")
    module = bitnet.BitNetModule("sim", ctx.model, n_threads=1)
    lm = bitnet.BitNetForCausalLM.from_pretrained(ctx.model, "sim", n_threads=1)
    th.manual_seed(0)
    tiny_torch = bitnet.BitNetTransformer(bitnet.BitNetTransformerConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1))
    dev_linear = bitnet.to_device(th.nn.Sequential(bitnet.BitLinear(4, 2)), ctx.bn).eval()
    ns = SimpleNamespace(**vars(ctx), module=module, lm=lm, tiny_torch=tiny_torch, dev_linear=dev_linear,
                         ref_t=module(th.tensor([PROMPT]), max_length=6, stop_token_ids=[]))
    yield ns
    module.close()
    lm.close()


TORCH_CASES = _torch_cases()


@pytest.mark.parametrize("fn,exc,pat", TORCH_CASES)
def test_bad_input_torch(tctx, fn, exc, pat):
    import torch as th

    _check(tctx, fn, exc, pat)
    assert th.equal(tctx.module(th.tensor([PROMPT]), max_length=6, stop_token_ids=[]), tctx.ref_t)
