"""Basic inference on the default device (the simulator when no card is present).

Run as is: ``python examples/basic_inference.py [model.gguf]``. Without a model it writes a
small random BitNet b1.58 model first.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from bitnet import BitNet, bitnet_inference
from bitnet.models import make_random_model


def main() -> None:
    if len(sys.argv) > 1:
        model = sys.argv[1]
    else:
        model = os.path.join(tempfile.mkdtemp(prefix="bitnet-example-"), "model.gguf")
        make_random_model(model, preset="tiny", seed=0)
        print(f"wrote a random model to {model}")

    with BitNet() as bn:
        bn.load_weights(model)
        input_tokens = np.array([1, 2, 3, 4, 5], dtype=np.int32)
        output = bn.inference(input_tokens, max_output=16)
        print(f"Generated {len(output)} tokens: {output.tolist()}")

        # Asynchronous: start, do something else, wait with a timeout.
        bn.inference_async([1, 2, 3, 4, 5], max_output=16)
        if bn.wait(timeout_ms=5000):
            print(f"async job: {bn.get_output().tolist()}")
        else:
            bn.abort()
            print("timed out; partial output:", bn.get_output().tolist())

        perf = bn.performance
        print(f"card cycles: total {perf.total_cycles:,} (compute {perf.compute_cycles:,}, "
              f"DMA {perf.dma_cycles:,}); {perf.tokens_per_second:.1f} tokens/s; "
              f"{perf.inference_count} jobs")
        print(bn.status, bn.model_info, sep="\n")

    # One call: open, load, generate, close.
    print("bitnet_inference:", bitnet_inference(np.array([1, 2, 3, 4, 5]), model_path=model, max_output=8).tolist())


if __name__ == "__main__":
    main()
