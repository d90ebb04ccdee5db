#!/usr/bin/env python3
"""Fingerprints of the codes `toga quantize` writes for every stage-1 row of docs/RESULTS.md on
stories260K (the configurations of scripts/quant_results.py, 128 calibration windows of 512).

tests/quant/data/stage1_code_hashes.json was written by this script with the stage-1 binary
(commit 31f3bb0, before the Plan engine); tests/quant/test_stage1_regression.cpp recomputes the
same fingerprints with today's binary, once from the flags and once from the resolved Plan file,
and requires them equal: the Plan engine reproduces stage 1 bit for bit.

Fingerprint: FNV-1a 64 over, for each quantized tensor (weight_packed, weight_scale,
weight_zero_point, input_perm) in name order, its name, a NUL, and its raw bytes.

The test uses 16 calibration windows (--calib 16) to stay fast; the full RESULTS calibration (128
windows) was checked once with both binaries (docs/results/stage1_code_hashes_calib128*.json).

usage: scripts/stage1_code_hashes.py TOGA_BINARY OUT.json [--threads N] [--calib N]
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_results import CONFIGS, MODELS  # noqa: E402

SUFFIXES = (".weight_packed", ".weight_scale", ".weight_zero_point", ".input_perm")


def fnv1a64(chunks):
    h = 0xCBF29CE484222325
    for data in chunks:
        for b in data:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def fingerprint(safetensors_path):
    with open(safetensors_path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    chunks = []
    for name in sorted(k for k in header if k != "__metadata__" and k.endswith(SUFFIXES)):
        begin, end = header[name]["data_offsets"]
        chunks += [name.encode() + b"\0", blob[base + begin:base + end]]
    return "%016x" % fnv1a64(chunks)


def main():
    toga, out = sys.argv[1], sys.argv[2]
    threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    spec = MODELS["stories260k"]
    calib = list(spec["calib"])
    if "--calib" in sys.argv[3:]:
        calib[1] = sys.argv[sys.argv.index("--calib", 3) + 1]
    result = {"model": "stories260K", "calibration": calib, "threads": int(threads), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, _label, flags in CONFIGS:
            if flags is None:
                continue
            ckpt = os.path.join(tmp, name)
            subprocess.run([toga, "quantize", spec["path"], ckpt, *flags, *calib, "--threads", threads],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result["configs"][name] = {"flags": flags, "fingerprint": fingerprint(os.path.join(ckpt, "model.safetensors"))}
            print(name, result["configs"][name]["fingerprint"], flush=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
