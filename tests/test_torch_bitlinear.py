"""BitLinear: eval mode is the card (exact integer accumulation, bit-identical outputs), training
mode learns through straight-through estimators; to_device runs BitLinears on the simulated
card; the float helpers reproduce the engine's C library; torch stays optional.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bitnet  # noqa: E402
from bitnet import BitNet  # noqa: E402
from bitnet import torch_api as ta  # noqa: E402
from bitnet.torch_api import BitLinear, DeviceBitLinear, to_device  # noqa: E402

PY_DIR = str(Path(bitnet.__file__).resolve().parent.parent)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def card():
    with BitNet("sim") as bn:
        yield bn


def _inputs(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """Rows with varied scales, including an all-zero row, a row with one huge outlier and rows
    whose codes land exactly on .5 ties (x * s = k + 1/2 for the absmax 127)."""
    x = rng.standard_normal((rows, k)).astype(np.float32) * rng.uniform(0.01, 30, (rows, 1)).astype(np.float32)
    x[0] = 0.0
    x[1, 3] = 1e4
    ties = np.arange(k, dtype=np.float32) % 255 - 127 + 0.5        # exact halves in code units
    x[2] = ties
    x[2, 0] = 127.0                                                  # absmax 127 -> s = 1
    return x


# ---------------------------------------------------------------------------------------------
# eval mode == the card
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(64, 48), (300, 70), (2560, 129), (7000, 16)])
def test_eval_equals_card_matmul(card, k, n, record_property):
    torch.manual_seed(k)
    layer = BitLinear(k, n).eval()
    t, beta = layer.ternary()
    slot = card.load_weights_from_array(t.numpy(), scale=beta)
    x = _inputs(np.random.default_rng(k), 9, k)
    y_dev, acc_dev = card.matmul(x, slot, return_acc=True)
    y, acc, s = layer.quantized_forward(torch.from_numpy(x))
    assert acc.dtype == torch.int64
    assert np.array_equal(acc.numpy(), acc_dev.astype(np.int64)), "integer accumulators differ"
    rel = float(np.max(np.abs(y.numpy() - y_dev) / np.maximum(np.abs(y_dev), 1e-30)))
    assert rel <= 1e-6
    assert np.array_equal(y.numpy(), y_dev), f"outputs not bit-identical (max rel {rel:.3g})"
    # the module's forward in eval mode is the same computation
    with torch.no_grad():
        assert torch.equal(layer(torch.from_numpy(x)), y)
    record_property("bitlinear_vs_matmul", f"K={k} N={n}: acc equal, max rel diff {rel:.3g}")


def test_eval_integer_path_exact_beyond_fp32_range(card):
    """With K > 131071, |acc| can exceed 2^24 (fp32 no longer exact): the integer product must
    still be exact."""
    k = 140_000
    torch.manual_seed(1)
    layer = BitLinear(k, 3).eval()
    with torch.no_grad():
        layer.weight.copy_(torch.sign(torch.randn(3, k)))             # every code +-1
    t, beta = layer.ternary()
    x = np.empty((2, k), dtype=np.float32)
    x[0] = 0.999 * t[0].numpy()                                       # acc[0, 0] = 127 * K > 2^24
    x[1] = np.where(np.arange(k) % 2 == 0, 0.999, -0.5)
    slot = card.load_weights_from_array(t.numpy(), scale=beta)
    y_dev, acc_dev = card.matmul(x, slot, return_acc=True)
    y, acc, _ = layer.quantized_forward(torch.from_numpy(x))
    assert int(acc[0, 0]) == 127 * k > 2**24
    assert np.array_equal(acc.numpy(), acc_dev.astype(np.int64))
    assert np.array_equal(y.numpy(), y_dev)


def test_eval_shapes_bias_and_dtype():
    torch.manual_seed(3)
    layer = BitLinear(32, 8, bias=True).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        y = layer(x)
        y2 = torch.stack([layer(x[i]) for i in range(2)])
        y1 = layer(x[0, 0])
    assert y.shape == (2, 5, 8) and y.dtype == torch.float32
    assert torch.equal(y, y2) and torch.equal(y1, y[0, 0])
    ref, _, _ = layer.quantized_forward(x)
    assert torch.equal(y, ref + layer.bias.detach())
    with torch.no_grad():
        assert layer(x.double()).dtype == torch.float64


def test_ternary_matches_converter_absmean():
    from bitnet.convert import ternarise_absmean

    torch.manual_seed(4)
    layer = BitLinear(256, 96)
    t, beta = layer.ternary()
    t_np, beta_np = ternarise_absmean(layer.weight.detach().numpy())
    assert t.dtype == torch.int8 and set(np.unique(t.numpy())) <= {-1, 0, 1}
    assert np.array_equal(t.numpy(), t_np) and beta == beta_np
    # the cache follows in-place updates of the weight
    with torch.no_grad():
        layer.weight.mul_(3.0)
    t2, beta2 = layer.ternary()
    assert beta2 != beta and np.array_equal(t2.numpy(), ternarise_absmean(layer.weight.detach().numpy())[0])


def test_bad_arguments():
    with pytest.raises(TypeError, match="in_features"):
        BitLinear(2.5, 3)
    with pytest.raises(ValueError, match="out_features"):
        BitLinear(3, 0)
    layer = BitLinear(8, 4)
    with pytest.raises(ValueError, match="in_features=8"):
        layer(torch.randn(3, 7))
    with pytest.raises(TypeError, match="float tensor"):
        layer(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(np.ones((3, 8), dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# training mode: straight-through estimators
# ---------------------------------------------------------------------------------------------

def test_ste_gradients_flow():
    torch.manual_seed(5)
    layer = BitLinear(16, 4, bias=True).train()
    x = torch.randn(6, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) > 0
    assert layer.bias.grad is not None and x.grad is not None
    # straight-through: d(sum y)/dx = column sums of the quantised weight, dW = column sums of x_q
    t, beta = layer.ternary()
    wq = t.float() * beta
    assert torch.allclose(x.grad, wq.sum(0).expand(6, 16), atol=1e-6)
    q, s = ta.quantize_activations(x)
    assert torch.allclose(layer.weight.grad, (q / s).sum(0).expand(4, 16), atol=1e-5)


def test_training_mode_forward_is_fake_quantised():
    torch.manual_seed(6)
    layer = BitLinear(64, 32)
    x = torch.randn(4, 64)
    y_train = layer.train()(x)
    with torch.no_grad():
        y_eval = layer.eval()(x)
    # same quantised operands, different float order only
    assert torch.allclose(y_train, y_eval, rtol=1e-5, atol=1e-6)


def test_training_step_lowers_loss():
    torch.manual_seed(7)
    net = torch.nn.Sequential(BitLinear(20, 64, bias=True), torch.nn.ReLU(), BitLinear(64, 3, bias=True))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(256, 20, generator=g)
    y = (x[:, :3] * torch.tensor([1.0, -2.0, 0.5])).argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0], "one training step did not lower the loss"
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        acc = float((net.eval()(x).argmax(1) == y).float().mean())
    assert acc > 0.8


# ---------------------------------------------------------------------------------------------
# to_device
# ---------------------------------------------------------------------------------------------

def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        BitLinear(48, 128, bias=True), torch.nn.ReLU(),
        torch.nn.Sequential(BitLinear(128, 96), torch.nn.GELU()),
        torch.nn.LayerNorm(96),
        BitLinear(96, 10, bias=True),
    )


def test_to_device_mlp_equals_pytorch_eval(card):
    net = _mlp(9).eval()
    x = torch.randn(17, 48) * 3
    with torch.no_grad():
        ref = net(x)
    assert to_device(net, card) is net
    wrapped = [m for m in net.modules() if isinstance(m, DeviceBitLinear)]
    assert len(wrapped) == 3
    assert all(name.endswith(".inner") for name, m in net.named_modules() if isinstance(m, BitLinear))
    macs0 = card.performance_details()["macs"]
    with torch.no_grad():
        out = net(x)
        out3 = net(x.reshape(17, 1, 48)).reshape(17, 10)
    assert torch.equal(out, ref), f"device MLP differs from PyTorch eval by {float((out - ref).abs().max()):.3g}"
    assert torch.equal(out3, ref)
    assert all(m.slot is not None and m.bitnet is card for m in wrapped)
    # the matmuls really ran on the card: 2 passes of 17 rows through 48x128, 128x96, 96x10
    assert card.performance_details()["macs"] - macs0 == 2 * 17 * (48 * 128 + 128 * 96 + 96 * 10)


def test_to_device_follows_training_updates(card):
    net = _mlp(10)
    to_device(net, card)
    x = torch.randn(8, 48)
    with torch.no_grad():
        before = net.eval()(x)
    before_slots = [m.slot for m in net.modules() if isinstance(m, DeviceBitLinear)]
    assert None not in before_slots
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = net(x).square().mean()
    loss.backward()                      # training mode runs in PyTorch, gradients reach the weights
    opt.step()
    net.eval()
    with torch.no_grad():
        out = net(x)
    # the same network without the card
    plain = _mlp(10)
    plain.load_state_dict({k.replace(".inner", ""): v for k, v in net.state_dict().items()})
    with torch.no_grad():
        ref = plain.eval()(x)
    assert torch.equal(out, ref) and not torch.equal(out, before)
    after_slots = [m.slot for m in net.modules() if isinstance(m, DeviceBitLinear)]
    assert after_slots == before_slots, "a changed weight must be reloaded into the same slot"


def test_to_device_single_layer_and_device_string():
    layer = BitLinear(40, 20).eval()
    x = torch.randn(3, 40)
    with torch.no_grad():
        ref = layer(x)
    dev = to_device(layer, "sim")
    assert isinstance(dev, DeviceBitLinear) and dev.inner is layer
    with torch.no_grad():
        assert torch.equal(dev(x), ref)
    # re-targeting an already wrapped layer keeps one wrapper
    with BitNet("sim") as other:
        moved = to_device(dev, other)
        assert isinstance(moved, DeviceBitLinear) and moved.inner is layer and moved.bitnet is other
        with torch.no_grad():
            assert torch.equal(moved(x), ref)
    dev.bitnet.close()


def test_to_device_bad_arguments():
    with pytest.raises(TypeError, match="module"):
        to_device(object(), "sim")
    with pytest.raises(TypeError, match="device"):
        to_device(torch.nn.Linear(2, 2), 3)


# ---------------------------------------------------------------------------------------------
# the engine's float functions
# ---------------------------------------------------------------------------------------------

def _libm():
    name = ctypes.util.find_library("m")
    if name is None or "libm.so.6" not in name:
        pytest.skip("needs glibc's libm (the engine's expf/powf/cosf on this platform)")
    lib = ctypes.CDLL(name)
    for fn, n in (("expf", 1), ("cosf", 1), ("sinf", 1), ("sqrtf", 1)):
        getattr(lib, fn).restype = ctypes.c_float
        getattr(lib, fn).argtypes = [ctypes.c_float] * n
    return lib


def test_expf_is_the_c_library_expf():
    lib = _libm()
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(-110, 0, 40000), rng.uniform(-40, 40, 40000), rng.uniform(85, 90, 2000),
                        -rng.exponential(1e-3, 5000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, 88.73, -103.97, -87.4, -150.0]]).astype(np.float32)
    ref = np.array([lib.expf(float(v)) for v in x.tolist()], dtype=np.float32)
    got = ta._expf(torch.from_numpy(x)).numpy()
    same = (ref.view(np.uint32) == got.view(np.uint32)) | (np.isnan(ref) & np.isnan(got))
    assert same.all(), f"{(~same).sum()} mismatches, e.g. x={x[~same][:3]}"


def test_sqrtf_and_rope_tables_are_the_c_library():
    lib = _libm()
    x = (np.random.default_rng(12).random(20000) * 1e-3).astype(np.float32)
    ref = np.array([lib.sqrtf(float(v)) for v in x.tolist()], dtype=np.float32)
    assert np.array_equal(ta._sqrtf(torch.from_numpy(x)).numpy(), ref)
    cos, sin = ta._rope_tables(10000.0, 64, 100)
    assert cos.shape == (100, 32) and cos.dtype == torch.float32
    inv = np.float32(1.0) / np.float32(np.float32(10000.0) ** (np.float32(2 * 5) / np.float32(64)))
    a = np.float32(np.float32(77) * inv)
    assert abs(float(cos[77, 5]) - lib.cosf(float(a))) <= 1e-6 and abs(float(sin[77, 5]) - lib.sinf(float(a))) <= 1e-6
    assert float(cos[0, 0]) == 1.0 and float(sin[0, 0]) == 0.0


def test_lane_dot_order():
    """The ordered dot equals a scalar loop over 16 lanes (NUMERICS.md), not a plain sum."""
    rng = np.random.default_rng(13)
    a = rng.standard_normal((3, 50)).astype(np.float32) * 1e3
    b = rng.standard_normal((4, 50)).astype(np.float32)
    got = ta._lane_dot(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for i in range(3):
        for j in range(4):
            acc = np.zeros(16, np.float32)
            for k in range(50):
                acc[k % 16] = np.float32(acc[k % 16] + np.float32(a[i, k] * b[j, k]))
            for w in (8, 4, 2, 1):
                acc[:w] = (acc[:w] + acc[w:2 * w]).astype(np.float32)
            assert got[i, j] == acc[0]


# ---------------------------------------------------------------------------------------------
# torch is optional
# ---------------------------------------------------------------------------------------------

def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PY_DIR + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_import_bitnet_does_not_import_torch():
    r = _run("import sys, bitnet; assert 'torch' not in sys.modules, 'torch imported'; "
             "from bitnet import BitLinear; assert 'torch' in sys.modules; print(BitLinear.__module__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "bitnet.torch_api"


@pytest.mark.parametrize("name", ["BitNetModule", "BitNetForCausalLM", "BitLinear", "BitNetTransformer", "export",
                                  "to_device"])
def test_without_torch_names_the_extra(name):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import bitnet\n"
            "bitnet.BitNet\n"
            "try:\n"
            f"    from bitnet import {name}\n"
            "except ImportError as e:\n"
            "    print('IMPORTERROR', e)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "IMPORTERROR" in r.stdout and 'pip install "bitnet[torch]"' in r.stdout


def test_lazy_names_resolve():
    for name in ("BitNetModule", "BitNetForCausalLM", "BitLinear", "BitNetTransformer", "export", "to_device"):
        assert getattr(bitnet, name) is getattr(ta, name)
        assert name in dir(bitnet)
    with pytest.raises(AttributeError):
        bitnet.no_such_name  # noqa: B018
