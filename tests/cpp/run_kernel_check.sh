#!/usr/bin/env bash
# Builds tests/cpp/kernel_check.cpp and runs it: natively (every x86 kernel this CPU has), and,
# when an AArch64 cross compiler and qemu-aarch64 are installed (CI installs
# g++-aarch64-linux-gnu and qemu-user), for the NEON kernels with and without the dot-product
# extension. Usage: bash tests/cpp/run_kernel_check.sh [native|aarch64|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"
out="${TMPDIR:-/tmp}/bitnet-kernel-check"
mkdir -p "$out"
common=(-std=c++17 -O3 -Wall -Wextra -Wshadow -Werror -ffp-contract=off -Isim/kernels)
srcs=(tests/cpp/kernel_check.cpp sim/kernels/ref.cpp sim/kernels/dispatch.cpp sim/kernels/slot_memory.cpp)

if [ "$what" = native ] || [ "$what" = all ]; then
  if [ "$(uname -m)" = x86_64 ]; then
    x86=(-Wno-uninitialized -Wno-maybe-uninitialized)
    c++ "${common[@]}" -c sim/kernels/avx2.cpp -o "$out/avx2.o" -mavx2 -mfma -mf16c
    c++ "${common[@]}" "${x86[@]}" -c sim/kernels/avx512.cpp -o "$out/avx512.o" \
      -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512dq -mfma -mf16c
    c++ "${common[@]}" "${x86[@]}" -c sim/kernels/amx.cpp -o "$out/amx.o" \
      -mamx-tile -mamx-int8 -mgfni -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512dq
    c++ "${common[@]}" "${srcs[@]}" "$out"/{avx2,avx512,amx}.o -o "$out/kernel_check"
  else
    c++ "${common[@]}" "${srcs[@]}" sim/kernels/neon.cpp -o "$out/kernel_check"
  fi
  "$out/kernel_check"
fi

if [ "$what" = aarch64 ] || [ "$what" = all ]; then
  if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
    # Every C++ source of the extension (not the Python bindings) must build for AArch64 too.
    for f in cpp/*.cpp sim/*.cpp sim/kernels/*.cpp; do
      case "$f" in cpp/bind*.cpp) continue ;; esac
      aarch64-linux-gnu-g++ "${common[@]}" -c "$f" -o "$out/arm_obj.o"
    done
    echo "aarch64: every core source compiles (-Werror)"
    for arch in armv8-a armv8.2-a+dotprod; do
      aarch64-linux-gnu-g++ "${common[@]}" -march="$arch" -static "${srcs[@]}" sim/kernels/neon.cpp \
        -o "$out/kernel_check_arm"
      echo "aarch64 -march=$arch (qemu):"
      qemu-aarch64 "$out/kernel_check_arm"
    done
  else
    echo "aarch64: no cross compiler or qemu-aarch64; skipped" >&2
    [ "$what" = aarch64 ] && exit 1
  fi
fi
