"""Child process of the corrupt-file tests: loads each file given on stdin (one path per
line), runs two tokens if it loaded, and prints one line per file: `OK path`, `ERR path code`,
or `EXC path type` (an exception that is not a BitNetError: a test failure). Printing before
and after each file lets the parent detect a hang and name the file."""
import sys

import bitnet

with bitnet.BitNet("sim", n_threads=1) as bn:
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        print(f"START {path}", flush=True)
        try:
            bn.load_weights(path)
            out = bn.inference([1, 2], max_output=2, stop_token_ids=[])
            assert len(out) == 2
            print(f"OK {path}", flush=True)
        except bitnet.BitNetError as e:
            print(f"ERR {path} {e.code}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            print(f"EXC {path} {type(e).__name__}: {e}", flush=True)
