"""Training to FPGA deployment: train a tiny ternary BitNet transformer in PyTorch, export it to
a GGUF model file, run it on the simulated card, and compare.

The toy task: given 8 random digits, write them sorted (``--task sort``, the default) or
copied (``--task copy``). The model is a 2-layer BitNetTransformer (hidden 256, 4 query heads
sharing 2 key/value heads, squared-ReLU FFN, tied embeddings): every projection is a QAT
``BitLinear`` with ternary weights and int8 activations. About 30 s on one free CPU core.

Run as is: ``python examples/train_to_fpga.py [--task sort|copy] [--steps 240] [--out model.gguf]``.
Needs ``pip install "bitnet[torch]"``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from bitnet import BitNet, BitNetForCausalLM, BitNetTransformer, export
from bitnet.torch_api import BitNetTransformerConfig

PAD, BOS, EOS, SEP, DIGIT0 = 0, 1, 2, 3, 4          # token ids; digits are 4..13
N_DIGITS = 8
PROMPT_LEN = N_DIGITS + 2                            # BOS d1..d8 SEP
ANSWER_LEN = N_DIGITS + 1                            # answer digits, EOS


def make_batch(task: str, n: int, seed: int):
    """``n`` sequences ``BOS d1..d8 SEP answer EOS`` and their labels (the answer part only)."""
    g = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (n, N_DIGITS), generator=g) + DIGIT0
    answer = digits.sort(dim=1).values if task == "sort" else digits
    x = torch.cat([torch.full((n, 1), BOS), digits, torch.full((n, 1), SEP), answer, torch.full((n, 1), EOS)], dim=1)
    labels = x.clone()
    labels[:, :PROMPT_LEN] = -100
    return x, labels


def train(model: BitNetTransformer, task: str, steps: int, batch: int, lr: float) -> None:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    for step in range(steps):
        x, labels = make_batch(task, batch, seed=10_000 + step)
        loss = model(x, labels=labels).loss              # fake-quantised forward, straight-through grads
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)


def accuracy(tokens: torch.Tensor, x: torch.Tensor) -> float:
    return float((tokens[:, PROMPT_LEN:] == x[:, PROMPT_LEN:]).all(dim=1).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("sort", "copy"), default="sort")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval", type=int, default=200, help="held-out prompts to evaluate")
    parser.add_argument("--out", default=None, help="GGUF file to write (default: a temporary file)")
    parser.add_argument("--type", default="tq2_0", help="ternary encoding: tq2_0, tq1_0, i2_s or f16")
    parser.add_argument("--device", default="sim", help='"sim" or a card such as /dev/bitnet0')
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for this tiny model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = BitNetTransformerConfig(
        vocab_size=16, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, hidden_act="relu2", max_position_embeddings=64, rope_theta=10000.0,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    model = BitNetTransformer(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training a {n_params / 1e6:.2f}M-parameter ternary transformer to {args.task} {N_DIGITS} digits")
    t0 = time.perf_counter()
    train(model, args.task, args.steps, args.batch, args.lr)
    print(f"trained in {time.perf_counter() - t0:.1f} s")

    # PyTorch eval mode: exactly the card's arithmetic (docs/NUMERICS.md).
    model.eval()
    x, _ = make_batch(args.task, args.eval, seed=1)    # held out (training used seeds 10000+)
    prompts = x[:, :PROMPT_LEN]
    torch_tokens = model.generate(prompts, max_new_tokens=ANSWER_LEN)

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="bitnet-train-"), f"{args.task}.gguf")
    export(model, out, type=args.type)
    print(f"exported to {out} ({os.path.getsize(out) / 1024:.0f} KiB, {args.type})")

    with BitNetForCausalLM.from_pretrained(out, device=args.device) as card_model:
        t1 = time.perf_counter()
        card_tokens = card_model.generate(prompts, max_new_tokens=ANSWER_LEN)   # one batched job
        seconds = time.perf_counter() - t1
        card_logits = card_model(x[:16]).logits
        perf = card_model.bitnet.performance
    with torch.no_grad():
        torch_logits = model(x[:16]).logits
    diff = float((card_logits - torch_logits).abs().max())
    agree = int((card_tokens == torch_tokens).all(dim=1).sum())

    print(f"accuracy on {args.eval} held-out prompts: PyTorch {accuracy(torch_tokens, x):.1%}, "
          f"{args.device} {accuracy(card_tokens, x):.1%}")
    print(f"greedy tokens identical on {agree}/{args.eval} prompts; max |logits card - PyTorch| = {diff:.3g}")
    print(f"card: {perf.total_cycles:,} cycles for {args.eval * ANSWER_LEN} tokens in {seconds:.2f} s")
    example = prompts[0, 1:].tolist()
    print("example:", [t - DIGIT0 for t in example[:-1]], "->",
          [t - DIGIT0 for t in card_tokens[0, PROMPT_LEN:PROMPT_LEN + N_DIGITS].tolist()])


if __name__ == "__main__":
    main()
