// What this CPU can run, detected at run time (the hosts of one machine kind differ: AMX comes and
// goes, AMD has AVX-512 VNNI without AMX), and which kernel family to use: the best available, or
// the one TOGA_ISA pins (scalar | avx512vnni), refused when the CPU lacks it.
#pragma once

#include <string>
#include <vector>

namespace toga::rt {

struct CpuInfo {
  std::string vendor;
  bool avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;  // CPUID and the OS's XCR0 both say so
};

const CpuInfo& cpu_info();

enum class Isa { kScalar, kAvx512Vnni };

const char* isa_name(Isa isa);
// Kernel families this CPU runs, best last.
std::vector<Isa> available_isas();
bool isa_available(Isa isa);
// The best available, or TOGA_ISA's choice (an error naming what the CPU lacks).
Isa selected_isa();

}  // namespace toga::rt
