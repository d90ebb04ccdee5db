#!/usr/bin/env python3
"""Layer-sharded GPTQ (`toga quantize` over N processes, dist/layer_shards.h): the peak resident
memory of every rank, against one process, on SmolLM2-135M and a random Llama-3.2-1B (bf16
safetensors written by build/bench_load_memory), and a check that every sharded checkpoint is byte
for byte the single process's. The ranks run one after another (sequential GPTQ), so on one machine
this shows what each of N machines would need, not a speed-up.

    python3 bench/sharded_quantize.py [--toga build/toga] [--processes 1,2,3] [--json docs/results/sharded_quantize.json]

Each rank runs under /usr/bin/time (its own peak RSS); all ranks of a run share this machine's cores
in turn (each with every core).
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
SMOLLM2 = os.path.join(DATA, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
RANDOM_MODEL_TOKENIZER = os.path.join(DATA, "tokenizers", "llama2", "tokenizer.model")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def run(toga, model, extra, n, out):
    """Starts the n ranks (each under /usr/bin/time), returns per-rank peak RSS and the wall time."""
    port = free_port()
    procs = []
    t0 = time.time()
    for r in range(n):
        env = dict(os.environ)
        if n > 1:
            env.update(TOGA_WORLD_SIZE=str(n), TOGA_RANK=str(r), TOGA_MASTER=f"127.0.0.1:{port}")
        rss = os.path.join(out + ".logs", f"rank{r}.rss")
        log = open(os.path.join(out + ".logs", f"rank{r}.log"), "w")
        cmd = ["/usr/bin/time", "-f", "%M", "-o", rss, toga, "quantize", model, out] + extra
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), rss, log))
    peaks = []
    for p, rss, log in procs:
        if p.wait() != 0:
            log.close()
            sys.exit(f"rank failed: see {log.name}:\n" + open(log.name).read()[-3000:])
        log.close()
        peaks.append(int(open(rss).read().split()[-1]) * 1024)
    return peaks, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toga", default=os.path.join(ROOT, "build", "toga"))
    ap.add_argument("--bench-load-memory", default=os.path.join(ROOT, "build", "bench_load_memory"))
    ap.add_argument("--processes", default="1,2,3")
    ap.add_argument("--models", default="smollm2,llama32-1b")
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--work", default=os.path.join(ROOT, "out", "sharded_quantize"))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    models = {}
    for m in a.models.split(","):
        if m == "smollm2":
            models[m] = (SMOLLM2, [])
        elif m == "llama32-1b":
            path = os.path.join(a.work, "random-llama32-1b")
            if not os.path.exists(path):
                subprocess.run([a.bench_load_memory, "write", path], check=True)
            models[m] = (path, ["--tokenizer", RANDOM_MODEL_TOKENIZER])
        else:
            sys.exit(f"unknown model {m}")
    recipe = ["--method", "gptq", "--wbits", "4", "--group-size", "128", "--calib", str(a.calib),
              "--calib-seqlen", str(a.calib_seqlen), "--save-dtype", "bf16"]
    rows = []
    for name, (path, extra) in models.items():
        reference = None
        for n in [int(x) for x in a.processes.split(",")]:
            out = os.path.join(a.work, f"{name}-n{n}")
            for p in (out, out + ".logs"):
                shutil.rmtree(p, ignore_errors=True)
            os.makedirs(out + ".logs")
            peaks, wall = run(a.toga, path, recipe + extra, n, out)
            digest = sha256(os.path.join(out, "model.safetensors"))
            reference = reference or digest
            row = {"model": name, "processes": n, "peak_rss_bytes": peaks, "max_rank_rss_bytes": max(peaks),
                   "wall_seconds": wall, "identical_to_one_process": digest == reference}
            rows.append(row)
            print(f"{name} n={n}: peak RSS per rank {[round(p / 1e9, 2) for p in peaks]} GB, {wall:.0f} s, "
                  f"same bytes as 1 process: {digest == reference}", flush=True)
            shutil.rmtree(out)
    result = {"machine": platform.node(), "cpus": os.cpu_count(), "recipe": " ".join(recipe), "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    print("\n| model | processes | peak RSS per rank (GB) | largest rank / one process | wall s | same checkpoint bytes |")
    print("|---|---|---|---|---|---|")
    one = {r["model"]: r["max_rank_rss_bytes"] for r in rows if r["processes"] == 1}
    for r in rows:
        ratio = r["max_rank_rss_bytes"] / one[r["model"]] if r["model"] in one else float("nan")
        print(f"| {r['model']} | {r['processes']} | {', '.join(f'{p / 1e9:.2f}' for p in r['peak_rss_bytes'])} | "
              f"{ratio:.2f} | {r['wall_seconds']:.0f} | {'yes' if r['identical_to_one_process'] else 'NO'} |")


if __name__ == "__main__":
    main()
