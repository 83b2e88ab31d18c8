// multiversion.h: BITNET_HOST_CLONES compiles a host-side loop for AVX-512, AVX2 and baseline
// x86-64 and picks one at load time (GCC/Clang function multi-versioning). Every version does
// the same IEEE operations per element and per lane (the build has -ffp-contract=off, and
// reductions keep their written partial sums), so the results are bit-identical whichever
// runs; only the vector width changes. Off in AddressSanitizer builds and where
// multi-versioning is unavailable (one portable version).
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(BITNET_NO_CLONES)
#define BITNET_HOST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BITNET_HOST_CLONES
#endif
