#!/usr/bin/env bash
# Build the libFuzzer targets with clang (ASan + UBSan) and run each for N seconds (default 60):
# fuzz_gguf (model files) and fuzz_ioctl (the emulated driver's requests). A crash leaves
# crash-* files in fuzz/out/; CI fails and the input becomes a regression file under
# tests/fuzz_regressions/ (.gguf or .ioctl). Needs clang and libclang-rt (Debian: clang libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
OUT=fuzz/out
mkdir -p "$OUT/obj" "$OUT/corpus-gguf" "$OUT/corpus-ioctl"
CXX="${CXX_FUZZ:-clang++}"
FLAGS="-g -O1 -std=c++17 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -Icpp -Isim"
SRCS="cpp/gguf.cpp cpp/quant.cpp cpp/error.cpp cpp/log.cpp cpp/model.cpp cpp/sim_transport.cpp sim/card.cpp sim/thread_pool.cpp sim/kernels/ref.cpp sim/kernels/dispatch.cpp sim/kernels/slot_memory.cpp sim/driver_emu.cpp sim/ioctl_script.cpp"
objs=()
for s in $SRCS; do
  o="$OUT/obj/$(echo "$s" | tr / _).o"
  $CXX $FLAGS -c "$s" -o "$o"
  objs+=("$o")
done
# ISA kernel files with their own flags (the dispatcher picks them at run time).
$CXX $FLAGS -mavx2 -mfma -mf16c -c sim/kernels/avx2.cpp -o "$OUT/obj/avx2.o"; objs+=("$OUT/obj/avx2.o")
$CXX $FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512dq -mfma -mf16c -c sim/kernels/avx512.cpp -o "$OUT/obj/avx512.o"; objs+=("$OUT/obj/avx512.o")
$CXX $FLAGS -mamx-tile -mamx-int8 -mgfni -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512dq -c sim/kernels/amx.cpp -o "$OUT/obj/amx.o"; objs+=("$OUT/obj/amx.o")
$CXX $FLAGS -fsanitize=fuzzer fuzz/fuzz_gguf.cpp "${objs[@]}" -o "$OUT/fuzz_gguf" -lpthread
$CXX $FLAGS -fsanitize=fuzzer fuzz/fuzz_ioctl.cpp "${objs[@]}" -o "$OUT/fuzz_ioctl" -lpthread
# Seed corpus: a valid tiny model and a few of its corruptions.
python3 - "$OUT/corpus-gguf" <<'PY'
import sys, os
sys.path.insert(0, "tests")
from bitnet.models import make_random_model
import corrupt_gen
d = sys.argv[1]
base = make_random_model(os.path.join(d, "base.gguf"), preset="tiny", seed=0, num_hidden_layers=1, vocab_size=256)
for i, (name, blob) in enumerate(corrupt_gen.variants(str(base), n_random=5)):
    if i % 25 == 0:
        open(os.path.join(d, f"seed{i}.gguf"), "wb").write(blob)
PY
cp tests/fuzz_regressions/*.gguf "$OUT/corpus-gguf/" 2>/dev/null || true
rc=0
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 "$OUT/fuzz_gguf" -max_total_time="$SECONDS_PER_TARGET" \
  -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$OUT/" -print_final_stats=1 "$OUT/corpus-gguf" 2>&1 | tail -n 15 || rc=1
# The driver emulation's request parsing: seed sessions plus earlier failures. Leak detection is
# on here (the driver owns threads, staging buffers and commands: nothing may outlive a session).
python3 fuzz/ioctl_seeds.py "$OUT/corpus-ioctl"
cp tests/fuzz_regressions/*.ioctl "$OUT/corpus-ioctl/" 2>/dev/null || true
ASAN_OPTIONS=detect_leaks=1 "$OUT/fuzz_ioctl" -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 \
  -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 -artifact_prefix="$OUT/" -print_final_stats=1 \
  "$OUT/corpus-ioctl" 2>&1 | tail -n 15 || rc=1
exit "$rc"
