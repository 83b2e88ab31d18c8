"""Card faults injected into the simulator (issue 7, "never crash, never lose").

Each fault kind of INJECT_FAULT (docs/DEVICE_ABI.md sections 5 and 10) is injected on both
simulator devices, "sim" (the card model called directly) and "sim+ioctl" (the kernel transport
over the emulated driver), so that it strikes in the middle of a generation job. Then:

* the job raises BitNetError with code HW_ERROR and ``card_error`` = the card's code;
* ``status`` is ERROR with ``error_code`` HW_ERROR and ``card_error`` set;
* ``get_output()`` returns exactly the tokens generated before the fault, which are the prefix
  of a clean run;
* ``reset()`` brings the device back to IDLE and the next inference is exact.

The hang kind ends in a host timeout instead (code TIMEOUT) and only "sim+ioctl" models it.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import BitNet, BitNetError, ErrorCode
from bitnet.errors import CARD_ERRORS
from bitnet.models import make_random_model

DEVICES = ["sim", "sim+ioctl"]
# kind -> the card error code it latches (enum bitnet_card_error)
KINDS = {"dma": 2, "hw": 7, "fifo_overflow": 8, "engine": 13}
PROMPT = [5, 17, 3, 250, 9]
N_TOKENS = 12
FAULT_AT_TOKEN = 5   # the fault strikes the forward pass that would make token 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_random_model(tmp_path_factory.mktemp("faults") / "tiny.gguf", preset="tiny", seed=11))


@pytest.fixture(scope="module")
def clean(model):
    """Greedy tokens of a clean run, and the card commands of one forward pass."""
    with BitNet("sim", n_threads=1) as bn:
        bn.load_weights(model)
        c0 = bn.performance_details()["commands"]
        one = bn.inference(PROMPT, max_output=1, stop_token_ids=[])
        c1 = bn.performance_details()["commands"]
        tokens = bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[])
        c2 = bn.performance_details()["commands"]
    per_pass = c1 - c0   # max_output=1: the prompt's one forward pass
    assert per_pass > 0 and c2 - c1 == per_pass * N_TOKENS   # one pass per token, prompt included
    assert one[0] == tokens[0]
    return tokens, per_pass


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("device", DEVICES)
def test_card_fault_mid_generation(model, clean, device, kind):
    tokens, per_pass = clean
    with BitNet(device, n_threads=1) as bn:
        bn.load_weights(model)
        # Token i (1-based) comes out of forward pass i; passes 1..5 complete, the fault hits a
        # command in the middle of pass 6.
        bn._dev._inject_fault(1, kind=kind, after=per_pass * FAULT_AT_TOKEN + per_pass // 2)
        with pytest.raises(BitNetError) as e:
            bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[])
        err = e.value
        assert err.code == ErrorCode.HW_ERROR and err.code_name == "HW_ERROR"
        assert err.card_error == KINDS[kind] and err.card_error_name == CARD_ERRORS[KINDS[kind]]
        assert f"error {KINDS[kind]} ({CARD_ERRORS[KINDS[kind]]})" in str(err)
        st = bn.status
        assert st.state == "ERROR" and st.error_code == ErrorCode.HW_ERROR and st.card_error == KINDS[kind]
        # the tokens before the fault stay readable: exactly the clean run's prefix
        out = bn.get_output()
        assert out.dtype == np.int32
        assert out.tolist() == tokens[:FAULT_AT_TOKEN].tolist()
        assert bn.get_output().tolist() == out.tolist()   # reading does not consume them
        # ERROR is latched: no new work until reset()
        with pytest.raises(BitNetError) as e2:
            bn.inference(PROMPT, max_output=2)
        assert e2.value.code == ErrorCode.STATE and "reset()" in str(e2.value)
        assert bn.get_output().tolist() == out.tolist()
        bn.reset()
        st = bn.status
        assert st.state == "IDLE" and st.error_code == 0 and st.card_error == 0
        assert bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[]).tolist() == tokens.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_async_fault_is_reported_once_then_tokens_stay_readable(model, clean, device):
    tokens, per_pass = clean
    with BitNet(device, n_threads=1) as bn:
        bn.load_weights(model)
        bn._dev._inject_fault(1, kind="dma", after=per_pass * 3)
        bn.inference_async(PROMPT, max_output=N_TOKENS, stop_token_ids=[])
        assert bn.wait(60_000) is True
        assert not bn.is_busy and bn.status.state == "ERROR"
        with pytest.raises(BitNetError) as e:
            bn.get_output()
        assert e.value.code == ErrorCode.HW_ERROR and e.value.card_error == 2
        assert bn.get_output().tolist() == tokens[:3].tolist()
        assert bn.get_output(2).tolist() == tokens[:2].tolist()
        bn.reset()
        assert bn.inference(PROMPT, max_output=4, stop_token_ids=[]).tolist() == tokens[:4].tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_fault_in_the_prompt_pass_leaves_no_tokens(model, clean, device):
    tokens, per_pass = clean
    with BitNet(device, n_threads=1) as bn:
        bn.load_weights(model)
        bn._dev._inject_fault(1, kind="fifo_overflow")
        with pytest.raises(BitNetError) as e:
            bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[])
        assert e.value.card_error == 8
        assert bn.get_output().size == 0
        bn.reset()
        assert bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[]).tolist() == tokens.tolist()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("device", DEVICES)
def test_card_fault_in_matmul_and_logits(model, device, kind):
    with BitNet(device, n_threads=1) as bn:
        slot = bn.load_weights_from_array(np.ones((3, 8), np.int8))
        bn._dev._inject_fault(1, kind=kind, after=1)
        assert np.allclose(bn.matmul(np.ones(8, np.float32), slot), 8.0)   # the one that completes
        with pytest.raises(BitNetError) as e:
            bn.matmul(np.ones(8, np.float32), slot)
        assert e.value.code == ErrorCode.HW_ERROR and e.value.card_error == KINDS[kind]
        assert bn.status.state == "ERROR" and bn.status.card_error == KINDS[kind]
        bn.reset()
        assert np.allclose(bn.matmul(np.ones(8, np.float32), slot), 8.0)
        bn.load_weights(model)
        ref = bn.logits(PROMPT)
        bn._dev._inject_fault(1, kind=kind)
        with pytest.raises(BitNetError) as e:
            bn.logits(PROMPT)
        assert e.value.card_error == KINDS[kind] and bn.status.state == "ERROR"
        bn.reset()
        assert np.array_equal(bn.logits(PROMPT), ref)


def test_hang_mid_generation_times_out_keeps_tokens_and_reset_recovers(model, clean):
    tokens, per_pass = clean
    with BitNet("sim+ioctl", n_threads=1) as bn:
        bn.load_weights(model)
        bn._dev._set_card_timeout_ms(200)
        bn._dev._inject_fault(1, kind="hang", after=per_pass * 4 + 1)
        with pytest.raises(TimeoutError) as e:
            bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[])
        assert e.value.code == ErrorCode.TIMEOUT and e.value.card_error == 0
        st = bn.status
        assert st.state == "ERROR" and st.error_code == ErrorCode.TIMEOUT
        assert bn.get_output().tolist() == tokens[:4].tolist()
        bn.reset()
        assert bn.inference(PROMPT, max_output=N_TOKENS, stop_token_ids=[]).tolist() == tokens.tolist()


def test_fault_hook_arguments():
    with BitNet("sim") as bn:
        with pytest.raises(ValueError, match="unknown fault kind 'melt'"):
            bn._dev._inject_fault(1, kind="melt")
        with pytest.raises(ValueError, match="hung card"):
            bn._dev._inject_fault(1, kind="hang")
        with pytest.raises(ValueError, match="after must be >= 0"):
            bn._dev._inject_fault(1, kind="dma", after=-1)
        slot = bn.load_weights_from_array(np.ones((3, 8), np.int8))
        bn._dev._inject_fault(1, kind="dma")
        bn._dev._inject_fault(0, kind="none")   # clears it
        assert np.allclose(bn.matmul(np.ones(8, np.float32), slot), 8.0)
