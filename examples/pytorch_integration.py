"""PyTorch integration: a BitNet model on the card as a torch module, Hugging Face style
generation and logits, and BitLinear layers of your own network running on the card.

Run as is: ``python examples/pytorch_integration.py [model.gguf | hf_checkpoint_dir]``.
Without an argument it writes a small random BitNet b1.58 model first. Needs
``pip install "bitnet[torch]"``.
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch

from bitnet import BitLinear, BitNet, BitNetForCausalLM, BitNetModule, to_device
from bitnet.models import make_random_model


def main() -> None:
    torch.manual_seed(0)
    if len(sys.argv) > 1:
        model_path = sys.argv[1]
    else:
        model_path = os.path.join(tempfile.mkdtemp(prefix="bitnet-example-"), "model.bin")
        make_random_model(model_path, preset="tiny", seed=0)
        print(f"wrote a random model to {model_path}")

    # 1. The seed's nn.Module: token ids in, generated ids out (greedy, batched on the card).
    with BitNetModule(model_path=model_path) as model:
        input_ids = torch.tensor([[1, 2, 3, 4, 5]])
        output = model(input_ids, max_length=16)
        print(f"BitNetModule on {model.bitnet.device!r}: generated {output.shape[1]} tokens: {output[0].tolist()}")

    # 2. Hugging Face style: from_pretrained (a GGUF file or a HF BitNet checkpoint directory,
    #    converted once and cached), logits, and generate() returning prompt + new tokens.
    lm = BitNetForCausalLM.from_pretrained(model_path)
    logits = lm(input_ids).logits                               # float32 [1, 5, vocab]
    print(f"logits {tuple(logits.shape)}, next token {int(logits[0, -1].argmax())}")
    batch = torch.tensor([[0, 0, 1, 2, 3],                      # left-padded, as in transformers
                          [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1],
                         [1, 1, 1, 1, 1]])
    out = lm.generate(batch, attention_mask=mask, max_new_tokens=8)
    print("generate (greedy):", out.tolist())
    sampled = lm.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=True, temperature=0.8,
                          top_k=40, top_p=0.95, seed=1)
    print("generate (sampled, seed 1):", sampled[:, 5:].tolist())
    perf = lm.bitnet.performance
    print(f"card: {perf.total_cycles:,} cycles ({perf.compute_cycles:,} compute), {perf.inference_count} jobs")
    lm.close()

    # 3. Your own network built from BitLinear: train in PyTorch, then run its ternary matmuls
    #    on the card. The outputs equal PyTorch's eval mode bit for bit.
    net = torch.nn.Sequential(BitLinear(64, 256, bias=True), torch.nn.ReLU(), BitLinear(256, 10))
    x = torch.randn(32, 64)
    target = x[:, :10].argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        reference = net(x)
    with BitNet("sim") as card:
        to_device(net, card)
        with torch.no_grad():
            on_card = net(x)
        macs = card.performance_details()["macs"]
    print(f"MLP after training: loss {loss.item():.3f}, accuracy {(on_card.argmax(1) == target).float().mean():.2f}; "
          f"card == PyTorch eval: {torch.equal(on_card, reference)} ({macs:,} MACs on the card)")


if __name__ == "__main__":
    main()
