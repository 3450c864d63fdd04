#include "cpu_features.h"

#include <cstdlib>

namespace cgns {

bool cpu_has_avx512() {
#if CGNS_X86_AVX512
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool avx512_enabled() {
  const char* flag = std::getenv("CGNS_NO_AVX512");
  const bool disabled = flag != nullptr && flag[0] != '\0' && flag[0] != '0';
  return !disabled && cpu_has_avx512();
}

}  // namespace cgns
