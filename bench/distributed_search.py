#!/usr/bin/env python3
"""Data-parallel search on this machine: per-step time split into the model's forward/backward (what
the ranks share out), waiting for the slowest rank, the gradient all-reduce, and the rest every rank
repeats (hypernetwork, budget, AdamW), for 1, 2 and 4 processes of `toga launch` on SmolLM2, plus the
all-reduce volume and the loopback bandwidth at that size. Several processes on 2 cores show
correctness and communication cost, not speed-up: docs/DISTRIBUTED.md projects 8 machines from
these numbers.

    python3 bench/distributed_search.py [--toga build/toga] [--steps 4] [--json docs/results/distributed_search.json]

Runs nothing else heavy meanwhile. Each run ends with the search's GPTQ on 1 window (cheap).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "..", "shared", "data", "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(toga, n, steps, batch, seqlen, mode, out):
    args = [toga]
    if n > 1:
        args += ["launch", "-n", str(n)]
    args += ["search", MODEL, out, "--mode", mode, "--budget", "0.125" if mode == "joint" else "4.5",
             "--steps", str(steps), "--batch", str(batch), "--seqlen", str(seqlen), "--order-windows", "4",
             "--calib", "1", "--calib-seqlen", "64", "--checkpoint-every", "0", "--dtype", "bf16"]
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({' '.join(args)}):\n{p.stderr[-3000:]}")
    report = json.load(open(os.path.join(out, "search.json")))
    curve = report["curve"][1:]  # the first step warms up
    mean = lambda k: statistics.mean(s.get(k, 0.0) for s in curve)
    row = {"processes": n, "steps_timed": len(curve), "step_seconds": mean("seconds"),
           "model_seconds": mean("model_seconds"), "wait_seconds": mean("wait_seconds"),
           "allreduce_seconds": mean("allreduce_seconds"),
           "allreduce_bytes_per_step": report.get("allreduce_bytes_per_step", 0),
           "tokens_per_second": mean("tokens_per_second"), "wall_seconds": time.time() - t0}
    row["repeated_seconds"] = row["step_seconds"] - row["model_seconds"] - row["wait_seconds"] - row["allreduce_seconds"]
    if row["allreduce_seconds"] > 0:
        row["allreduce_gb_per_s"] = row["allreduce_bytes_per_step"] / row["allreduce_seconds"] / 1e9
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toga", default=os.path.join(ROOT, "build", "toga"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--mode", default="joint")
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in a.processes.split(",")]:
            rows.append(run(a.toga, n, a.steps, a.batch, a.seqlen, a.mode, os.path.join(tmp, f"n{n}")))
            print(f"  {n} process(es) done", file=sys.stderr)
    print(f"SmolLM2-135M, --mode {a.mode}, batch {a.batch} x {a.seqlen} tokens, bf16, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}); means over steps 2..{a.steps}")
    print("| processes | step s | model fwd+bwd s | wait s | all-reduce s | repeated s | tokens/s | all-reduce bytes/step | GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['step_seconds']:.3f} | {r['model_seconds']:.3f} | {r['wait_seconds']:.4f} | "
              f"{r['allreduce_seconds']:.4f} | {r['repeated_seconds']:.3f} | {r['tokens_per_second']:.0f} | "
              f"{r['allreduce_bytes_per_step']:,} | {r.get('allreduce_gb_per_s', 0):.2f} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump({"mode": a.mode, "batch": a.batch, "seqlen": a.seqlen, "steps": a.steps, "rows": rows,
                       "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
