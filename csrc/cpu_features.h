// Run-time choice of the AVX-512 kernels (x86-64 builds compile them with target attributes, so the shipped .so
// runs on any x86-64 and uses AVX-512 only where the running CPU has it).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CGNS_X86_AVX512 1
#else
#define CGNS_X86_AVX512 0
#endif

namespace cgns {

// The running CPU has AVX-512F and FMA.
bool cpu_has_avx512();
// cpu_has_avx512() and not switched off by CGNS_NO_AVX512=1. Read on every call (a getenv is nothing next to a
// kernel), so tests can run both paths in one process.
bool avx512_enabled();

}  // namespace cgns
