"""The PyTorch section of the seed README (../shared/seed/), run as written with only the model
path and the device filled in, checking what each call returns; and the seed's signatures of
BitNetModule / BitNetForCausalLM.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitnet import BitNet  # noqa: E402
from bitnet.models import make_random_model  # noqa: E402

DEVICE = "sim"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    # The seed calls the file "model.bin"; any name works.
    return str(make_random_model(tmp_path_factory.mktemp("seed-torch") / "model.bin", preset="small", seed=7))


def _greedy_reference(model_path, prompt, n):
    """Greedy tokens computed independently of generation: argmax of full-sequence logits."""
    seq, out = list(prompt), []
    with BitNet(DEVICE) as bn:
        bn.load_weights(model_path)
        for _ in range(n):
            tok = int(np.argmax(bn.logits(seq)[-1]))
            out.append(tok)
            seq.append(tok)
    return out


def test_pytorch_integration_example(model_path):
    # --- the seed's example, verbatim but for device= and the path ---
    import torch
    from bitnet import BitNetModule

    # Как nn.Module
    model = BitNetModule(device=DEVICE, model_path=model_path)
    input_ids = torch.tensor([[1, 2, 3, 4, 5]])
    output = model(input_ids)

    # HuggingFace-style генерация
    from bitnet import BitNetForCausalLM

    model2 = BitNetForCausalLM.from_pretrained(model_path, device=DEVICE)
    output2 = model2.generate(input_ids, max_new_tokens=50)
    # --- end of the example (the seed reuses the name `model`; kept apart to check both) ---

    with BitNet(DEVICE) as bn:
        bn.load_weights(model_path)
        eos = bn.model_config()["stop_token_ids"]
        room = bn.model_info.max_seq_len - 5                 # generation also stops at max_seq_len
        want = bn.inference([1, 2, 3, 4, 5])                  # max_output=1024, the seed's default
        want50 = bn.inference([1, 2, 3, 4, 5], 50)
    ref = _greedy_reference(model_path, [1, 2, 3, 4, 5], 8)

    assert isinstance(model, torch.nn.Module)
    assert isinstance(output, torch.Tensor) and output.dtype == torch.long
    assert output.shape == (1, len(want)) and output[0].tolist() == want.tolist()
    assert len(want) == min(1024, room) or int(want[-1]) in eos
    assert output[0, :8].tolist() == ref[: min(8, output.shape[1])]

    assert isinstance(model2, BitNetModule)
    assert output2.dtype == torch.long and output2.shape == (1, 5 + len(want50))
    assert output2[0, :5].tolist() == [1, 2, 3, 4, 5]
    assert output2[0, 5:].tolist() == want50.tolist()
    assert len(want50) == 50 or int(want50[-1]) in eos
    model.close()
    model2.close()


def test_seed_signatures():
    from bitnet import BitNetForCausalLM, BitNetModule

    init = inspect.signature(BitNetModule.__init__).parameters
    assert list(init)[1:3] == ["device", "model_path"] and init["model_path"].default is None
    fwd = inspect.signature(BitNetModule.forward).parameters
    assert list(fwd)[1:4] == ["input_ids", "max_length", "attention_mask"]
    assert fwd["max_length"].default == 1024 and fwd["attention_mask"].default is None
    gen = inspect.signature(BitNetModule.generate).parameters
    assert list(gen)[1:11] == ["input_ids", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                               "eos_token_id", "pad_token_id", "attention_mask", "seed"]
    assert gen["max_new_tokens"].default == 100
    assert issubclass(BitNetForCausalLM, BitNetModule)
    fp = inspect.signature(BitNetForCausalLM.from_pretrained).parameters
    assert list(fp)[:2] == ["model_path", "device"]
