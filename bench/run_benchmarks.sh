#!/usr/bin/env bash
# Builds and runs the forward-throughput and load-memory benchmarks, saves their JSON under
# docs/results/, and prints the markdown tables of docs/BENCHMARKS.md.
#
#   bench/run_benchmarks.sh [all|forward|memory|gptq|search|qgemm|tables] [extra bench_forward flags]
#
# e.g. bench/run_benchmarks.sh forward --benchmark_filter='peak|smollm2'
# Environment: TOGA_BENCH_BUILD (build dir, default build-bench), TOGA_BENCH_RESULTS (default
# docs/results), TOGA_BENCH_THREADS (default "1,2"), TOGA_BENCH_ITERS, TOGA_SHARED (default ../shared).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${TOGA_BENCH_BUILD:-$root/build-bench}
results=${TOGA_BENCH_RESULTS:-$root/docs/results}
mode=${1:-all}
[[ $# -gt 0 ]] && shift

# The CLI's runtime settings (src/cli/main.cpp): libgomp's default spin-waiting makes 2 threads far
# slower than 1 whenever another process holds a core, and libtorch's bf16 kernels need its
# AVX-512 build, which it only picks from the environment.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if grep -qw avx512f /proc/cpuinfo; then export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx512}; fi
export TOGA_SHARED=${TOGA_SHARED:-$root/../shared}

mkdir -p "$results"
if [[ $mode != tables ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" --target bench_forward bench_load_memory bench_gptq bench_search_step bench_qgemm -j"$(nproc)" >/dev/null
fi

machine() {
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores: $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "amx: $(grep -qw amx_tile /proc/cpuinfo && echo yes || echo no)"
    echo "avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)"
    echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-}"
    echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  } >"$results/machine.txt"
}

cd "$root"  # bench_load_memory's default directory (out/) and TOGA_SHARED are relative to here
if [[ $mode == all || $mode == forward ]]; then
  machine
  echo "uptime before: $(uptime)" | tee -a "$results/machine.txt" >&2
  "$build/bench_forward" --benchmark_out="$results/forward.json" --benchmark_out_format=json "$@" >&2
  echo "uptime after forward: $(uptime)" | tee -a "$results/machine.txt" >&2
fi
if [[ $mode == all || $mode == memory ]]; then
  [[ $mode == memory ]] && machine
  echo "uptime before memory: $(uptime)" | tee -a "$results/machine.txt" >&2
  "$build/bench_load_memory" --dir "$root/out/bench-llama32-1b" --json "$results/load_memory.json" >/dev/null
  echo "uptime after memory: $(uptime)" | tee -a "$results/machine.txt" >&2
fi

if [[ $mode == all || $mode == gptq ]]; then
  echo "uptime before gptq: $(uptime)" | tee -a "$results/machine.txt" >&2
  TOGA_BENCH_THREADS=${TOGA_BENCH_THREADS_GPTQ:-1} "$build/bench_gptq" --benchmark_out="$results/gptq.json" \
    --benchmark_out_format=json >&2
  echo "uptime after gptq: $(uptime)" | tee -a "$results/machine.txt" >&2
fi

if [[ $mode == all || $mode == qgemm ]]; then
  echo "uptime before qgemm: $(uptime)" | tee -a "$results/machine.txt" >&2
  "$build/bench_qgemm" --benchmark_out="$results/qgemm.json" --benchmark_out_format=json >&2
  echo "uptime after qgemm: $(uptime)" | tee -a "$results/machine.txt" >&2
fi

if [[ $mode == all || $mode == search ]]; then
  echo "uptime before search: $(uptime)" | tee -a "$results/machine.txt" >&2
  TOGA_BENCH_THREADS=${TOGA_BENCH_THREADS_SEARCH:-2} "$build/bench_search_step" \
    --benchmark_out="$results/search_step.json" --benchmark_out_format=json >&2
  echo "uptime after search: $(uptime)" | tee -a "$results/machine.txt" >&2
fi

python3 - "$results" <<'EOF'
import json, os, sys

results = sys.argv[1]
fwd_path = os.path.join(results, "forward.json")
if os.path.exists(fwd_path):
    data = json.load(open(fwd_path))
    runs = [b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration" and "error_occurred" not in b]
    def parts(b):
        return b["name"].split("/")
    # Under contention a benchmark gets only part of its cores (CPU share = process CPU time /
    # (wall time x threads)); rates per CPU-second received compare runs that got different shares.
    per_cpu = lambda b, key: b[key] / (b["cpu_share"] * b["threads"])
    peak, peak_cpu, stream = {}, {}, {}
    for b in runs:
        p = parts(b)
        if p[0] == "peak" and p[1].startswith("matmul"):
            peak[(p[2], int(b["threads"]))] = b["GFLOP/s"]
            peak_cpu[(p[2], int(b["threads"]))] = per_cpu(b, "GFLOP/s")
        elif p[0] == "peak" and p[1].startswith("stream"):
            stream[int(b["threads"])] = b["GB/s"]
    load = lambda b: f'{b["load1_before"]:.2f}→{b["load1_after"]:.2f}'
    print("### Ceilings (same process, same thread count)\n")
    print("| measurement | threads | result | CPU share | load1 |\n|---|---:|---:|---:|---|")
    for b in runs:
        p = parts(b)
        if p[0] != "peak":
            continue
        if p[1].startswith("matmul"):
            print(f'| {p[1]} {p[2]} (torch::matmul) | {int(b["threads"])} | {b["GFLOP/s"]:.1f} GFLOP/s '
                  f'({per_cpu(b, "GFLOP/s"):.1f} per CPU-s) | {b["cpu_share"]:.2f} | {load(b)} |')
        else:
            print(f'| {p[1]} fp32 (torch::sum) | {int(b["threads"])} | {b["GB/s"]:.1f} GB/s | {b["cpu_share"]:.2f} | {load(b)} |')
    gemv = [b for b in runs if parts(b)[0] == "gemv"]
    if gemv:
        print("\n### One decode-step linear, 1x2048 input by an 8192x2048 weight\n")
        print("| dtype | call | threads | ms | weight GB/s | CPU share | load1 |\n|---|---|---:|---:|---:|---:|---|")
        for b in gemv:
            p = parts(b)
            print(f'| {p[1]} | torch::{p[2]} | {int(b["threads"])} | {b["real_time"]:.2f} | {b["GB/s"]:.1f} | '
                  f'{b["cpu_share"]:.2f} | {load(b)} |')
    print("\n### Prefill (batch 1, one Model::forward, no KV cache)\n")
    print("| model | dtype | seqlen | threads | tokens/s | GFLOP/s | matmul peak | % of peak | CPU share | % of peak per CPU-s | load1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for b in runs:
        p = parts(b)
        if p[0] != "prefill":
            continue
        t = int(b["threads"])
        pk = peak.get((p[2], t))
        pk_s, frac = (f"{pk:.1f}", f'{100 * b["GFLOP/s"] / pk:.0f}%') if pk else ("-", "-")
        frac_cpu = f'{100 * per_cpu(b, "GFLOP/s") / peak_cpu[(p[2], t)]:.0f}%' if pk else "-"
        print(f'| {p[1]} | {p[2]} | {p[3][3:]} | {t} | {b["tokens/s"]:.1f} | {b["GFLOP/s"]:.1f} | {pk_s} | {frac} | '
              f'{b["cpu_share"]:.2f} | {frac_cpu} | {load(b)} |')
    print("\n### Decode (1-token steps, KV cache at context 512)\n")
    print("| model | dtype | threads | tokens/s | ms/token | GFLOP/s | % of matmul peak | GB/s streamed | % of stream bandwidth | CPU share | load1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for b in runs:
        p = parts(b)
        if p[0] != "decode":
            continue
        t = int(b["threads"])
        pk, bw = peak.get((p[2], t)), stream.get(t)
        frac = f'{100 * b["GFLOP/s"] / pk:.0f}%' if pk else "-"
        bfrac = f'{100 * b["GB/s"] / bw:.0f}%' if bw else "-"
        print(f'| {p[1]} | {p[2]} | {t} | {b["tokens/s"]:.2f} | {1000 / b["tokens/s"]:.0f} | {b["GFLOP/s"]:.1f} | {frac} | '
              f'{b["GB/s"]:.1f} | {bfrac} | {b["cpu_share"]:.2f} | {load(b)} |')
    errors = [b for b in data["benchmarks"] if "error_occurred" in b]
    for b in errors:
        print(f'\nskipped {b["name"]}: {b.get("error_message", "")}')

mem_path = os.path.join(results, "load_memory.json")
if os.path.exists(mem_path):
    print("\n### Peak memory of load_model (fresh process per case; target ≤ 1.3× the loaded weights)\n")
    print("| checkpoint | format | loaded as | weights (MiB) | peak RSS − RSS before (MiB) | ratio | RSS kept after (MiB) | load s | load1 |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in json.load(open(mem_path)):
        if r["case"] != "load":
            continue
        mib = lambda x: x / 1048576
        print(f'| {os.path.basename(r["checkpoint"])} | {r["format"]} | {r["dtype"]} | {mib(r["weights_bytes"]):.0f} | '
              f'{mib(r["peak_minus_before_bytes"]):.0f} | {r["ratio"]:.3f} | {mib(r["after_minus_before_bytes"]):.0f} | '
              f'{r["load_seconds"]:.1f} | {r["load1"]:.2f} |')

search_path = os.path.join(results, "search_step.json")
if os.path.exists(search_path):
    data = json.load(open(search_path))
    print("\n### One TOGA-q search step (W4A4 + INT8 salient supernet, bf16, batch 1 x 512; FLOPs = 3 x forward)\n")
    print("| benchmark | s/step | tokens/s | GFLOP/s | bf16 matmul peak (same run) | % of peak |\n|---|---:|---:|---:|---:|---:|")
    for b in data["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration" or "error_occurred" in b or not b["name"].startswith("search_step"):
            continue
        print(f'| {b["name"]} | {b["real_time"] / 1000:.2f} | {b["tokens/s"]:.1f} | {b["GFLOP/s"]:.1f} | '
              f'{b["bf16_peak_GFLOP/s"]:.1f} | {100 * b.get("of_bf16_peak", 0):.1f}% |')

qgemm_path = os.path.join(results, "qgemm.json")
if os.path.exists(qgemm_path):
    data = json.load(open(qgemm_path))
    rows = {b["name"]: b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration" and "error_occurred" not in b}
    print("\n### Packed W4A4 + 12.5 % INT8 GEMM (activation quantization included) vs libtorch fp32, same run\n")
    print("| shape | M | threads | kernel | GOPS | % of VNNI peak | packed weight GB/s | torch fp32 GFLOP/s | speed-up |\n"
          "|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for name, b in rows.items():
        if not name.startswith("qgemm/"):
            continue
        _, shape, m, t = name.split("/")[:4]
        torch_b = rows.get(name.replace("qgemm/", "torch_fp32/"), {})
        ratio = torch_b["real_time"] / b["real_time"] if torch_b else float("nan")
        print(f'| {shape} | {m[2:]} | {t.split(":")[1]} | {b.get("label", "")} | {b["GOPS"]:.1f} | '
              f'{100 * b.get("of_vnni_peak", float("nan")):.1f}% | {b["weight_GB/s"]:.1f} | '
              f'{torch_b.get("GFLOP/s", float("nan")):.1f} | {ratio:.2f}x |')
    for name, b in rows.items():
        if name.startswith("peak/vnni"):
            print(f'\nVNNI int8 peak ({name}): {b["GOPS"]:.0f} GOPS')

gptq_path = os.path.join(results, "gptq.json")
if os.path.exists(gptq_path):
    data = json.load(open(gptq_path))
    print("\n### GPTQ per linear layer, Llama-3.2-1B shapes (random weights; float ops 4N³/3 + R·N², plus 2·8192·N² for the Hessian)\n")
    print("| benchmark | layer | wall s | CPU s | GFLOP | GFLOP/s (wall) | GFLOP/s per CPU-s |\n|---|---|---:|---:|---:|---:|---:|")
    for b in data["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration" or "error_occurred" in b:
            continue
        sec, cpu = b["real_time"] / 1000.0, b["cpu_time"] / 1000.0
        gflop = b["GFLOP/s"] * sec
        print(f'| {b["name"].split("/")[0][3:]} | {b.get("label", b["name"])} | {sec:.2f} | {cpu:.2f} | {gflop:.1f} | '
              f'{b["GFLOP/s"]:.1f} | {gflop / cpu:.1f} |')
EOF
