"""BitNetTransformer: training to deployment (train a tiny model, export it, the simulator gives
PyTorch's eval logits and greedy tokens), Hugging Face config/checkpoint compatibility, and
export from transformers' BitNetForCausalLM.
"""
from __future__ import annotations

import time
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitnet import BitNet  # noqa: E402
from bitnet.torch_api import (  # noqa: E402
    BitLinear,
    BitNetForCausalLM,
    BitNetRMSNorm,
    BitNetTransformer,
    BitNetTransformerConfig,
    export,
    save_pretrained,
    to_device,
)

LOGIT_TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The machine is shared: one thread is both faster and steadier than two under load.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# the toy task: copy 8 digits
# ---------------------------------------------------------------------------------------------

PAD, BOS, EOS, SEP, DIGIT0 = 0, 1, 2, 3, 4
N_DIGITS = 8
PROMPT_LEN = N_DIGITS + 2          # BOS d1..d8 SEP
ANSWER_LEN = N_DIGITS + 1          # d1..d8 EOS


def copy_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(0, 10, (n, N_DIGITS), generator=g) + DIGIT0
    x = torch.cat([torch.full((n, 1), BOS), d, torch.full((n, 1), SEP), d, torch.full((n, 1), EOS)], dim=1)
    labels = x.clone()
    labels[:, :PROMPT_LEN] = -100                     # learn the answer only
    return x, labels


def tiny_config(**kw) -> BitNetTransformerConfig:
    base = dict(vocab_size=16, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, bos_token_id=BOS,
                eos_token_id=EOS, pad_token_id=PAD)
    base.update(kw)
    return BitNetTransformerConfig(**base)


@pytest.fixture(scope="module")
def trained():
    """A tiny GQA BitNet trained on the copy task: ~100 Adam steps, about 10 s on one core."""
    torch.manual_seed(0)
    model = BitNetTransformer(tiny_config())
    steps = 100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        x, labels = copy_batch(64, seed=1000 + step)
        loss = model(x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    return model.eval(), losses, seconds


@pytest.fixture(scope="module")
def eval_set():
    x, _ = copy_batch(64, seed=7)          # held out: training used seeds 1000..1099
    return x


def test_training_reaches_accuracy(trained, eval_set, record_property):
    model, losses, seconds = trained
    assert losses[-1] < 0.1 * losses[0]
    out = model.generate(eval_set[:, :PROMPT_LEN], max_new_tokens=ANSWER_LEN)
    assert out.shape == (64, PROMPT_LEN + ANSWER_LEN)
    seq_acc = float((out[:, PROMPT_LEN:] == eval_set[:, PROMPT_LEN:]).all(1).float().mean())
    tok_acc = float((out[:, PROMPT_LEN:] == eval_set[:, PROMPT_LEN:]).float().mean())
    record_property("train", f"{seconds:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.4f}, "
                             f"eval sequence accuracy {seq_acc:.3f}, token accuracy {tok_acc:.3f}")
    assert seq_acc >= 0.9, f"copy task sequence accuracy {seq_acc:.3f} < 0.9 (loss {losses[-1]:.4f})"


def test_exported_model_on_sim_equals_pytorch_eval(trained, eval_set, tmp_path, record_property):
    """The acceptance test of training-to-deployment: the simulator's logits equal PyTorch eval
    logits (<= 1e-4; measured: bit-identical) and its greedy tokens equal PyTorch's on 64
    held-out prompts."""
    model, _, _ = trained
    path = export(model, tmp_path / "copy.gguf")                      # type tq2_0
    with torch.no_grad():
        torch_logits = model(eval_set).logits                          # [64, 19, 16]
    torch_tokens = model.generate(eval_set[:, :PROMPT_LEN], max_new_tokens=ANSWER_LEN)
    with BitNet("sim") as bn:
        bn.load_weights(path)
        cfg = bn.model_config()
        assert cfg["vocab_size"] == 16 and cfg["num_kv_heads"] == 2 and cfg["activation"] == "relu2"
        sim_logits = np.stack([bn.logits(row.numpy()) for row in eval_set])
    diff = float(np.abs(sim_logits - torch_logits.numpy()).max())
    sim = BitNetForCausalLM.from_pretrained(path, device="sim")
    sim_tokens = sim.generate(eval_set[:, :PROMPT_LEN], max_new_tokens=ANSWER_LEN)   # one batched job
    sim.close()
    same_rows = int((sim_tokens == torch_tokens).all(1).sum())
    sim_acc = float((sim_tokens[:, PROMPT_LEN:] == eval_set[:, PROMPT_LEN:]).all(1).float().mean())
    torch_acc = float((torch_tokens[:, PROMPT_LEN:] == eval_set[:, PROMPT_LEN:]).all(1).float().mean())
    record_property("deploy", f"max |sim - torch| logits = {diff:.3g}; greedy equal on {same_rows}/64 prompts; "
                              f"accuracy torch {torch_acc:.3f} sim {sim_acc:.3f}")
    assert diff <= LOGIT_TOL, f"simulator logits differ from PyTorch eval by {diff:.3g}"
    assert same_rows == 64, f"greedy tokens differ on {64 - same_rows} prompts"
    assert sim_acc == torch_acc


def test_every_export_type_gives_the_same_model(trained, eval_set, tmp_path):
    model, _, _ = trained
    with torch.no_grad():
        ref = model(eval_set[:4]).logits.numpy()
    for kind in ("tq1_0", "i2_s", "f16"):
        path = export(model, tmp_path / f"copy-{kind}.gguf", type=kind)
        with BitNet("sim") as bn:
            bn.load_weights(path)
            got = np.stack([bn.logits(row.numpy()) for row in eval_set[:4]])
        assert np.abs(got - ref).max() <= LOGIT_TOL, kind


def test_to_device_transformer_equals_pytorch_eval(trained, eval_set):
    """to_device on a whole transformer: every projection's matmul on the card."""
    import copy

    model, _, _ = trained
    dev_model = copy.deepcopy(model)
    with BitNet("sim") as bn:
        to_device(dev_model, bn)
        with torch.no_grad():
            got = dev_model(eval_set[:8]).logits
            ref = model(eval_set[:8]).logits
        assert bn.performance_details()["macs"] > 0
    assert torch.equal(got, ref)


# ---------------------------------------------------------------------------------------------
# architecture variants, random weights: simulator == PyTorch eval
# ---------------------------------------------------------------------------------------------

def _random_model(seed: int, **kw) -> BitNetTransformer:
    torch.manual_seed(seed)
    model = BitNetTransformer(tiny_config(**kw))
    with torch.no_grad():           # make the random model's logits spread like a trained one's
        model.model.embed_tokens.weight.mul_(40.0)
        for m in model.modules():
            if isinstance(m, BitNetRMSNorm):
                m.weight.uniform_(0.7, 1.3)
    return model.eval()


VARIANTS = {
    "gqa-relu2": dict(),
    "mha-silu": dict(num_key_value_heads=4, hidden_act="silu"),
    "mqa-hd128-theta5e5": dict(num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0,
                               intermediate_size=512, vocab_size=300),
    "three-layers-hd32": dict(num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3, vocab_size=64),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_match_sim(variant, tmp_path, record_property):
    model = _random_model(100 + list(VARIANTS).index(variant), **VARIANTS[variant])
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (3, 48), generator=g)
    path = export(model, tmp_path / "m.gguf")
    with torch.no_grad():
        ref = model(ids).logits
    with BitNet("sim") as bn:
        bn.load_weights(path)
        cfg = bn.model_config()
        assert cfg["activation"] == model.config.hidden_act
        assert cfg["head_dim"] == model.config.head_dim and cfg["num_kv_heads"] == model.config.num_key_value_heads
        got = np.stack([bn.logits(r.numpy()) for r in ids])
        sim_greedy = bn.inference(ids[0, :10].numpy(), max_output=12, stop_token_ids=[])
    diff = float(np.abs(got - ref.numpy()).max())
    record_property("variant", f"{variant}: max |sim - torch| = {diff:.3g}")
    assert diff <= LOGIT_TOL
    torch_greedy = model.generate(ids[0, :10], max_new_tokens=12, eos_token_id=[])[10:]
    assert torch_greedy.tolist() == sim_greedy.tolist()


def test_padding_gives_the_unpadded_logits():
    model = _random_model(5)
    a = torch.tensor([1, 5, 9, 4, 7, 11])
    b = torch.tensor([1, 3, 3])
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
        left = model(torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])]),
                     attention_mask=torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])).logits
        right = model(torch.stack([a, torch.cat([b, torch.zeros(3, dtype=torch.long)])]),
                      attention_mask=torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])).logits
    assert torch.equal(left[0], la) and torch.equal(left[1, 3:], lb)
    assert torch.equal(right[0], la) and torch.equal(right[1, :3], lb)
    out = model.generate(torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])]),
                         attention_mask=torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]]), max_new_tokens=5, eos_token_id=[])
    assert out[1, 6:].tolist() == model.generate(b, max_new_tokens=5, eos_token_id=[])[3:].tolist()


# ---------------------------------------------------------------------------------------------
# Hugging Face compatibility
# ---------------------------------------------------------------------------------------------

def test_config_from_hf_bitnetconfig_and_dict():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BitNetConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       rope_parameters={"rope_theta": 12345.0, "rope_type": "default"},
                                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    c = BitNetTransformerConfig.from_any(hf_cfg)
    assert (c.vocab_size, c.hidden_size, c.num_key_value_heads, c.head_dim, c.rope_theta, c.hidden_act) == \
        (96, 128, 2, 32, 12345.0, "relu2")
    assert BitNetTransformerConfig.from_any(hf_cfg.to_dict()) == c
    ours = BitNetTransformer(hf_cfg)
    hf = transformers.BitNetForCausalLM(hf_cfg)
    ours_keys = set(ours.state_dict())
    hf_keys = set(hf.state_dict()) - {"lm_head.weight"}
    assert ours_keys == hf_keys
    for k, v in hf.state_dict().items():
        if k in ours_keys:
            assert tuple(ours.state_dict()[k].shape) == tuple(v.shape), k
    # HF's BitNetConfig defaults to an untied head: supported in PyTorch, refused by export
    untied = BitNetTransformer(transformers.BitNetConfig(vocab_size=32, hidden_size=64, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1, bos_token_id=1, eos_token_id=2))
    assert untied.lm_head is not None and not untied.config.tie_word_embeddings
    with pytest.raises(ValueError, match="untied"):
        export(untied, "/nonexistent/x.gguf")


def test_config_errors():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        BitNetTransformerConfig(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        BitNetTransformerConfig(hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_size"):
        BitNetTransformerConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(TypeError, match="config"):
        BitNetTransformer(42)
    model = _random_model(1)
    with pytest.raises(ValueError, match="vocabulary"):
        model(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="contiguous"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1, 1]]))
    with pytest.raises(TypeError, match="input_ids"):
        model(torch.ones(1, 4))


def test_export_errors(tmp_path):
    small = BitNetTransformer(tiny_config(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                          num_key_value_heads=1))
    with pytest.raises(ValueError, match="multiple of 256"):
        export(small, tmp_path / "x.gguf", type="tq2_0")
    path = export(small, tmp_path / "x.gguf", type="f16")           # any shape as f16
    with BitNet("sim") as bn:
        bn.load_weights(path)
        assert bn.model_info.hidden_size == 64
    with pytest.raises(ValueError, match="type"):
        export(small, tmp_path / "y.gguf", type="q4_0")
    with pytest.raises(TypeError, match="model"):
        export("not a model", tmp_path / "z.gguf")
    with pytest.raises(TypeError, match="BitNetForCausalLM"):
        export(torch.nn.Linear(2, 2), tmp_path / "z.gguf")


def test_save_pretrained_loads_in_transformers(tmp_path, record_property):
    """Our checkpoint writer produces the 2B-4T packed format: transformers loads it and computes
    the same logits (1-token prompt: no near-tie rounding flips)."""
    transformers = pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = _random_model(21, vocab_size=64)
    d = save_pretrained(model, tmp_path / "ckpt")
    hf = transformers.BitNetForCausalLM.from_pretrained(str(d)).eval()     # fp32 checkpoint, fp32 model
    ids = torch.tensor([[BOS]])
    with torch.no_grad():
        want = hf(ids).logits[0]
        got = model(ids).logits[0]
    diff = float((want - got).abs().max())
    record_property("save_pretrained", f"transformers vs BitNetTransformer on a 1-token prompt: {diff:.3g}")
    assert diff <= 1e-3
    assert isinstance(hf.model.layers[0].self_attn.q_proj, transformers.integrations.bitnet.AutoBitLinear)


def test_hf_master_weights_load_into_bitnet_transformer(ckpt, record_property):
    """A transformers BitNet model with master weights (online quantisation) and our
    BitNetTransformer given its state dict compute the same function."""
    import hf_models as hm

    d = ckpt("master")
    hf = hm._load_hf_model(d)
    model = BitNetTransformer(hf.config)
    missing, unexpected = model.load_state_dict(hf.state_dict(), strict=False)
    assert not missing and set(unexpected) <= {"lm_head.weight"}
    model.eval()
    ids = torch.tensor([[hm.BOS_ID]])
    with torch.no_grad():
        want = hf(ids).logits[0]
        got = model(ids).logits[0]
    diff = float((want - got).abs().max())
    record_property("hf_master", f"transformers vs BitNetTransformer (master weights): {diff:.3g}")
    assert diff <= 1e-3


@pytest.mark.parametrize("name", ["gqa64", "bitlinear", "master"])
def test_export_hf_model_equals_converting_its_checkpoint(ckpt, gguf_file, name, tmp_path):
    """export(transformers model) writes the same model as bitnet.convert on its checkpoint
    directory: packed AutoBitLinear (offline), transformers' BitLinear (weight_scale = 1/beta)
    and master weights (online) all keep their codes and scales."""
    import hf_models as hm

    d = ckpt(name)
    hf = hm._load_hf_model(d)
    path = export(hf, tmp_path / f"{name}.gguf", type="tq2_0", embed_type="f16")
    ref_path = gguf_file(name, "tq2_0")
    prompt = [hm.BOS_ID, 17, 300, 42, 5, 77]
    with BitNet("sim") as bn:
        bn.load_weights(path)
        ours = bn.logits(prompt)
        bn.load_weights(ref_path)
        ref = bn.logits(prompt)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("name", ["gqa64", "bitlinear", "master"])
def test_from_pretrained_hf_checkpoint_computes_the_checkpoint(ckpt, name, tmp_path, record_property):
    """Start from a Hugging Face BitNet checkpoint (directory or transformers model): the
    BitNetTransformer computes what the converted file computes on the simulator, keeps doing so
    after fine-tuning and export."""
    import hf_models as hm
    from bitnet.convert import convert_hf_to_gguf

    d = ckpt(name)
    from_dir = BitNetTransformer.from_pretrained(d)
    from_model = BitNetTransformer.from_pretrained(hm._load_hf_model(d))
    ref_path = convert_hf_to_gguf(d, tmp_path / "ref.gguf", embed_type="f32")
    prompt = [hm.BOS_ID, 17, 300, 42, 5, 77, 9, 256]
    with BitNet("sim") as bn:
        bn.load_weights(ref_path)
        want = bn.logits(prompt)
    with torch.no_grad():
        a = from_dir(torch.tensor(prompt)).logits.numpy()
        b = from_model(torch.tensor(prompt)).logits.numpy()
    diff = max(float(np.abs(a - want).max()), float(np.abs(b - want).max()))
    record_property("from_pretrained", f"{name}: max |torch - sim| = {diff:.3g}")
    assert diff <= LOGIT_TOL
    for t_dir, t_model in zip(from_dir.state_dict().values(), from_model.state_dict().values()):
        assert torch.equal(t_dir, t_model)
    # fine-tune one step, export, and the simulator still follows PyTorch
    from_dir.train()
    opt = torch.optim.SGD(from_dir.parameters(), lr=0.05)
    ids = torch.tensor([prompt])
    loss = from_dir(ids, labels=ids).loss
    loss.backward()
    opt.step()
    from_dir.eval()
    path = export(from_dir, tmp_path / "tuned.gguf")
    with BitNet("sim") as bn:
        bn.load_weights(path)
        got = bn.logits(prompt)
    with torch.no_grad():
        tuned = from_dir(torch.tensor(prompt)).logits.numpy()
    assert np.abs(got - tuned).max() <= LOGIT_TOL and np.abs(tuned - want).max() > 0
