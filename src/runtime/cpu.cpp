#include "runtime/cpu.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace toga::rt {

namespace {

uint64_t xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuInfo detect() {
  CpuInfo c;
  unsigned a = 0, b = 0, cx = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &cx, &d)) return c;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &cx, 4);
  c.vendor = vendor;
  const unsigned max_leaf = a;
  __get_cpuid(1, &a, &b, &cx, &d);
  const bool osxsave = cx & (1u << 27);
  c.fma = cx & (1u << 12);
  const uint64_t xcr = osxsave ? xcr0() : 0;
  const bool os_avx = (xcr & 0x6) == 0x6, os_avx512 = (xcr & 0xE6) == 0xE6;
  const bool os_amx = (xcr & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  if (max_leaf < 7) return c;
  __cpuid_count(7, 0, a, b, cx, d);
  c.avx2 = os_avx && (b & (1u << 5));
  c.avx512f = os_avx512 && (b & (1u << 16));
  c.avx512bw = os_avx512 && (b & (1u << 30));
  c.avx512vl = os_avx512 && (b & (1u << 31));
  c.avx512vnni = os_avx512 && (cx & (1u << 11));
  c.amx_bf16 = os_amx && (d & (1u << 22));
  c.amx_tile = os_amx && (d & (1u << 24));
  c.amx_int8 = os_amx && (d & (1u << 25));
  __cpuid_count(7, 1, a, b, cx, d);
  c.avx512bf16 = os_avx512 && (a & (1u << 5));
  return c;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx512Vnni: return "avx512vnni";
  }
  return "?";
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out{Isa::kScalar};
  const CpuInfo& c = cpu_info();
  if (c.avx512f && c.avx512bw && c.avx512vnni) out.push_back(Isa::kAvx512Vnni);
  return out;
}

Isa selected_isa() {
  const auto isas = available_isas();
  const char* pinned = std::getenv("TOGA_ISA");
  if (!pinned || !*pinned) return isas.back();
  for (Isa isa : {Isa::kScalar, Isa::kAvx512Vnni})
    if (std::strcmp(pinned, isa_name(isa)) == 0) {
      for (Isa have : isas)
        if (have == isa) return isa;
      fail("TOGA_ISA={}: this CPU ({}) cannot run it", pinned, cpu_info().vendor);
    }
  fail("TOGA_ISA={} is not a kernel family (scalar, avx512vnni)", pinned);
}

bool isa_available(Isa isa) {
  for (Isa have : available_isas())
    if (have == isa) return true;
  return false;
}

}  // namespace toga::rt
