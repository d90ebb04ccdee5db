#!/usr/bin/env bash
# The main job on the shipped data, bounded to a few minutes on 2 cores: SmolLM2-135M-Instruct
# (GGUF) answers a question, its WikiText-2 perplexity on a slice, then an Atom-style W4A4 model
# (12.5% INT8 salient channels, reorder, GPTQ, KV4) and its before/after numbers and speed.
set -euo pipefail
cd "$(dirname "$0")/.."
TOGA=build/toga
MODEL=../shared/data/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=out/demo
mkdir -p "$OUT"
# --force: a second run of the demo replaces the outputs of the first (toga refuses by default).

echo "== chat (greedy) =="
$TOGA generate "$MODEL" --chat "What is the capital of France?" -n 64

echo "== FP perplexity, WikiText-2 test, first 8 windows of 2048 =="
$TOGA eval ppl "$MODEL" --max-windows 8 --json "$OUT/fp.ppl.json" --force

echo "== compress: W4A4 + 12.5% INT8 salient + GPTQ + KV4 (Atom recipe), 8 calibration windows =="
$TOGA quantize "$MODEL" "$OUT/w4a4-atom" --method atom --wbits 4 --abits 4 --calib 8 --report "$OUT/quantize.json" --force

echo "== compressed perplexity and KL divergence against the FP model =="
$TOGA eval ppl "$OUT/w4a4-atom" --max-windows 8 --json "$OUT/w4a4.ppl.json" --force
$TOGA eval kld "$OUT/w4a4-atom" --base "$MODEL" --max-windows 4 --json "$OUT/w4a4.kld.json" --force

echo "== compressed model answers =="
$TOGA generate "$OUT/w4a4-atom" --chat "What is the capital of France?" -n 64

echo "== speed, FP and compressed, on the runtime forward (llama-bench's prefill / decode tests) =="
$TOGA bench "$MODEL" -p 256 -n 64 -r 2
$TOGA bench "$OUT/w4a4-atom" -p 256 -n 64 -r 2 --lm-head int8
echo "results in $OUT/"
