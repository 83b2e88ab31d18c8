"""The ``bitnet`` command line: ``demo``, ``generate``, ``chat``, ``info``, ``convert``, ``bench``.

``bitnet demo`` is the main job on the default (simulated) device: it makes a small model if
none is given, streams generated tokens, and prints tokens/s and the card's counters.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import List, Optional

from . import _progress

__all__ = ["main"]

# One scheme for every command (main() maps exceptions to these codes).
EXIT_STATUS = """\
exit status:
  0    success
  1    bad arguments (usage error), or an OS error (e.g. a file that cannot be written)
  2    BitNetError: device, model file or conversion error (bad/corrupt GGUF, missing file)
  130  interrupted (Ctrl-C)
  141  stdout closed early (e.g. piped into head); nothing printed"""


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from .core import BitNet, _job_tokens

    model = args.model
    tmp = None
    if model is None:
        from .models import make_random_model

        tmp = tempfile.TemporaryDirectory(prefix="bitnet-demo-")
        model = os.path.join(tmp.name, "demo-model.gguf")
        print(f"no model given: writing a random {args.preset!r} BitNet b1.58 model to {model}")
        make_random_model(model, preset=args.preset, seed=args.seed)
    try:
        with BitNet(args.device) as bn:
            t0 = time.perf_counter()
            with _progress.loading(model, _progress.enabled(args.progress)):
                bn.load_weights(model)
            load_s = time.perf_counter() - t0
            cfg = bn.model_config()
            card = bn.card_info()
            print(f"device {bn.device!r}: transport {card['transport']}, kernel {card['kernel']}, "
                  f"board profile {card['profile']} @ {card['clock_mhz']:.0f} MHz")
            print(f"model {os.path.basename(model)}: arch {cfg['arch']}, {cfg['num_layers']} layers, hidden "
                  f"{cfg['hidden_size']}, vocab {cfg['vocab_size']}, activation {cfg['activation']}; "
                  f"{card['weight_used'] / 2**20:.1f} MiB on the card (loaded in {load_s:.2f} s)")
            rng = np.random.default_rng(args.seed)
            prompt = rng.integers(0, cfg["vocab_size"], size=args.prompt_len).astype(np.int32)
            print(f"prompt ({len(prompt)} tokens): {prompt.tolist()}")
            print("generated: ", end="", flush=True)
            bn.inference_async(prompt, args.max_tokens, temperature=args.temperature, seed=args.seed,
                               stop_token_ids=[])
            job = bn._job
            seen = 0
            t0 = time.perf_counter()
            # The library's token stream: this loop's own copy broke on `done` right after
            # printing, and lost a token that arrived in between (5 of 6 printed, now and then).
            for t in _job_tokens(job, 1000):
                print(t, end=" ", flush=True)
                seen += 1
            job.rethrow_if_failed()
            wall = time.perf_counter() - t0
            print()
            perf = bn.performance_details()
            print(f"{seen} tokens in {wall:.2f} s: {seen / wall:.1f} tokens/s on the host "
                  f"(job: {perf['tokens_per_second']:.1f} tokens/s)")
            clock = perf["clock_mhz"] * 1e6
            card_s = perf["total_cycles"] / clock if clock else 0.0
            print(f"card counters: total {perf['total_cycles']:,} cycles = {card_s * 1e3:.2f} ms at "
                  f"{perf['clock_mhz']:.0f} MHz (compute {perf['compute_cycles']:,}, DMA {perf['dma_cycles']:,}); "
                  f"{perf['matmuls']:,} matmuls, {perf['macs']:,} MACs")
            print(f"modeled card ({card['profile']}): {perf['card_tokens_per_second']:.1f} tokens/s for this job "
                  f"({perf['last_job_card_seconds'] * 1e3:.2f} ms of card time)")
            st = bn.status
            print(f"status: {st.state}, tokens processed {st.tokens_processed}, "
                  f"inference count {bn.performance.inference_count}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


# A plain conversation format for models whose file carries no chat template.
_PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")


def _open_model(args: argparse.Namespace):
    from .core import BitNet

    bn = BitNet(args.device, n_threads=getattr(args, "threads", None))
    try:
        with _progress.loading(args.model, _progress.enabled(args.progress)):
            bn.load_weights(args.model, tokenizer=getattr(args, "tokenizer", None))
    except BaseException:
        bn.close()
        raise
    return bn


def _sampling(args: argparse.Namespace) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _cmd_generate(args: argparse.Namespace) -> int:
    with _open_model(args) as bn:
        if args.ids:
            ids = bn.encode(args.prompt)
            out = bn.inference(ids, max_output=args.n_predict, **_sampling(args))
            print(" ".join(str(int(t)) for t in out))
            return 0
        for piece in bn.stream_text(args.prompt, args.n_predict, **_sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    with _open_model(args) as bn:
        tok = bn.tokenizer
        template = None if tok.chat_template else _PLAIN_CHAT_TEMPLATE
        if template is not None and interactive:
            print("note: the model has no chat template; using a plain 'User: / Assistant:' format", file=sys.stderr)
        messages = [{"role": "system", "content": args.system}] if args.system else []
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip() in ("/exit", "/quit"):
                break
            if not text.strip():
                continue
            messages.append({"role": "user", "content": text})
            ids = tok.encode_chat(messages, chat_template=template) if template else tok.encode_chat(messages)
            reply = []
            stop = ["\nUser:"] if template else None
            for piece in bn.stream_text(ids, args.n_predict, stop=stop, **_sampling(args)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            messages.append({"role": "assistant", "content": "".join(reply).strip()})
    return 0


def _decode_step_cost(bn) -> Optional[dict]:
    """Card counters of one decode step (batch 1), measured on the device.

    Runs a 1-token prompt for 2 tokens: two forward passes of one row each, which issue
    exactly the card commands of one decode step each (docs/DEVICE_ABI.md section 9).
    """
    cfg = bn.model_config()
    if cfg["max_seq_len"] < 2:
        return None
    keys = ("total_cycles", "dma_cycles", "compute_cycles", "commands", "matmuls", "weight_bytes_read", "macs")
    p0 = bn.performance_details()
    bn.inference([0], max_output=2, stop_token_ids=[])
    p1 = bn.performance_details()
    return {k: (p1[k] - p0[k]) / 2 for k in keys}


def _cmd_info(args: argparse.Namespace) -> int:
    from ._gguf_info import describe_gguf, format_description

    desc = describe_gguf(args.model)
    if not args.json:
        print(format_description(desc))
    if args.no_load:
        if args.json:
            json.dump(desc, sys.stdout, indent=1, default=str)
            sys.stdout.write("\n")
        return 0
    from .core import BitNet

    custom = {k: getattr(args, k) for k in ("clock_mhz", "lanes", "ddr_gbps") if getattr(args, k) is not None}
    with BitNet(args.device, profile=args.profile, **custom) as bn:
        with _progress.loading(args.model, _progress.enabled(args.progress)):
            bn.load_weights(args.model)
        cfg = bn.model_config()
        card = bn.card_info()
        cost = _decode_step_cost(bn)
        if args.json:
            desc["model_config"] = cfg
            desc["card_info"] = card
            desc["decode_step"] = cost
            json.dump(desc, sys.stdout, indent=1, default=str)
            sys.stdout.write("\n")
            return 0
        print()
        print(f"loaded on device {bn.device!r}:")
        for k in sorted(cfg):
            if k != "notes":
                print(f"{k:20s} {cfg[k]}")
        for note in cfg["notes"]:
            print(f"note: {note}")
        for k in sorted(card):
            print(f"card.{k:15s} {card[k]}")
        if cost is not None and cost["total_cycles"] > 0:
            modeled = card["counters"] == "cycle model"
            tps = card["clock_mhz"] * 1e6 / cost["total_cycles"]
            print(f"card model          {card['profile']} @ {card['clock_mhz']:g} MHz, {card['lanes']} x "
                  f"{card['lane_width']} MAC lanes, DDR {card['ddr_gbps']:g} GB/s, DMA {card['dma_gbps']:g} GB/s "
                  f"({card['counters']})")
            print(f"card cycles/token   {cost['total_cycles']:,.0f} (compute {cost['compute_cycles']:,.0f}, DMA "
                  f"{cost['dma_cycles']:,.0f}; {cost['commands']:.0f} commands, "
                  f"{cost['weight_bytes_read'] / 1e6:.2f} MB of weights streamed)")
            label = "predicted card tokens/s" if modeled else "card tokens/s (hardware counters)"
            print(f"{label}: {tps:.2f} (decode, batch 1: the card's matmuls only; attention, norms and the "
                  f"output head run on the host)")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from . import convert

    out = convert.convert_hf_to_gguf(args.hf_dir, args.output, type=args.type, embed_type=args.embed_type,
                                     progress=_progress.enabled(args.progress))
    print(f"wrote {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import benchmark

    return benchmark.main(args)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on exit status 1 (argparse's own default is 2, which this
    CLI reserves for BitNetError, so scripts can tell a bad invocation from a bad model)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _progress_args(sp: argparse.ArgumentParser, what: str) -> None:
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                   help=f"show {what} even when stderr is not a terminal")
    g.add_argument("-q", "--quiet", dest="progress", action="store_const", const=False,
                   help=f"never show {what} (default: shown on stderr when it is a terminal)")


def _parser() -> argparse.ArgumentParser:
    common = dict(epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p = _Parser(prog="bitnet", description="BitNet b1.58 accelerator tools", **common)
    p.add_argument("--debug", action="store_true", help="show a traceback on errors (default: one line)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, help: str, description: Optional[str] = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, **common)

    d = add("demo", "run a model on the default device, streaming tokens")
    d.add_argument("model", nargs="?", help="GGUF model file (default: make a small random model)")
    d.add_argument("--device", default=None, help="device: sim, sim+ioctl or /dev/bitnetN (default: auto)")
    d.add_argument("--preset", default="small", help="random model shape when no model is given")
    d.add_argument("--max-tokens", type=int, default=32)
    d.add_argument("--prompt-len", type=int, default=8)
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--seed", type=int, default=0)
    _progress_args(d, "the loading spinner")
    d.set_defaults(func=_cmd_demo)

    def text_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-m", "--model", required=True, help="GGUF model file")
        sp.add_argument("-n", "--n-predict", type=int, default=128, help="maximum new tokens (default 128)")
        sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        sp.add_argument("--top-k", type=int, default=0)
        sp.add_argument("--top-p", type=float, default=1.0)
        sp.add_argument("--seed", type=int, default=None)
        sp.add_argument("-t", "--threads", type=int, default=None, help="host threads (default: the CPUs this process may use)")
        sp.add_argument("--device", default=None, help="sim, sim+ioctl or /dev/bitnetN (default: auto)")
        sp.add_argument("--tokenizer", default=None, help="tokenizer.json to use instead of the model's own")
        _progress_args(sp, "the loading spinner")

    g = add("generate", "generate text from a prompt, streaming it")
    text_args(g)
    g.add_argument("-p", "--prompt", required=True)
    g.add_argument("--ids", action="store_true", help="print the generated token ids instead of text")
    g.set_defaults(func=_cmd_generate)

    ch = add("chat", "chat with a model (its chat template; one message per stdin line; /exit ends)")
    text_args(ch)
    ch.add_argument("--system", default=None, help="system message")
    ch.set_defaults(func=_cmd_chat)

    i = add("info", "describe a GGUF file (metadata, tensors); load it and print the configuration, "
                    "the card's, and the predicted card tokens/s",
            "Describe a GGUF model file: header, every metadata key (type and value; long arrays and "
            "strings summarised), and every tensor (type, shape, bytes) with totals per type. Then, "
            "unless --no-load, load it onto the device and print the configuration the loader "
            "decided, the card's, and the predicted card tokens/s.")
    i.add_argument("model")
    i.add_argument("--no-load", "--metadata-only", dest="no_load", action="store_true",
                   help="only describe the file; do not open a device or load the model")
    i.add_argument("--json", action="store_true",
                   help="print one JSON object instead (full metadata values; with the loaded "
                        "configuration unless --no-load)")
    i.add_argument("--device", default=None, help="sim, sim+ioctl or /dev/bitnetN (default: auto)")
    i.add_argument("--profile", default=None,
                   help="board profile of the simulator's cycle model: vibee-zcu104 (default), vibee-vcu118, kv260")
    i.add_argument("--clock-mhz", type=float, default=None, help="custom engine clock (simulator)")
    i.add_argument("--lanes", type=int, default=None, help="custom MAC lanes (simulator)")
    i.add_argument("--ddr-gbps", type=float, default=None, help="custom weight-memory bandwidth (simulator)")
    _progress_args(i, "the loading spinner")
    i.set_defaults(func=_cmd_info)

    b = add("bench", "llama-bench-style speed test (optionally against llama.cpp)")
    from .benchmark import add_arguments as _bench_args

    _bench_args(b)
    _progress_args(b, "the loading spinner")
    b.set_defaults(func=_cmd_bench)

    c = add("convert", "convert a Hugging Face BitNet checkpoint to GGUF")
    c.add_argument("hf_dir")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--type", default="tq2_0", choices=["tq2_0", "tq1_0", "i2_s", "f16"])
    c.add_argument("--embed-type", default="f16", choices=["f16", "f32", "bf16", "q8_0"])
    _progress_args(c, "progress bars (layers encoded, bytes written)")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``bitnet`` console script."""
    from .errors import BitNetError

    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BitNetError as e:
        if args.debug:
            raise
        print(f"bitnet: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout was closed early (`bitnet info MODEL | head`): stop quietly with the status a
        # tool killed by SIGPIPE has, and point stdout at /dev/null so the exit-time flush is silent.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        print(f"bitnet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
