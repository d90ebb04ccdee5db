#!/usr/bin/env python3
"""Saves tiny random Llama-3 (GQA, llama3 RoPE scaling, theta 500000), Qwen2, Qwen3 and Mistral
models with the installed transformers (v5 writes `rope_parameters`, `layer_types`), loads each with
toga and compares toga's logits with transformers' on the same ids. Also checks that a Qwen2 with a
per-layer sliding window, which toga does not implement, is refused with an error naming config.json.
Not a CI test: it needs torch and transformers from PyPI (large downloads). Set up once:

    python3 -m venv .venv-oracle && .venv-oracle/bin/pip install torch transformers
    .venv-oracle/bin/python scripts/check_transformers_v5_configs.py

The tokenizer (needed by `toga eval logits`) is stories260K's, converted by toga into each model
directory, so every model has its 512-token vocabulary.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(ROOT), "shared", "data", "models", "stories260K", "stories260K.bin")
TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
        "friends. One day, she found a shiny red ball under a big tree and ran home to show her mom.")
SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)


def cases():
    yield "llama3_gqa", LlamaConfig(**SHAPE, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    yield "llama_linear", LlamaConfig(**SHAPE, rope_parameters={"rope_type": "linear", "rope_theta": 50000.0,
                                                                 "factor": 4.0})
    yield "qwen2", Qwen2Config(**SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    yield "qwen3", Qwen3Config(**SHAPE, head_dim=32, rope_parameters={"rope_type": "default",
                                                                      "rope_theta": 1000000.0})
    yield "mistral_window", MistralConfig(**SHAPE, sliding_window=8,
                                          rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    # Qwen2 windows: from layer 0 on is toga's one window; past the last layer is none.
    qwen_rope = {"rope_type": "default", "rope_theta": 1000000.0}
    yield "qwen2_window_everywhere", Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8,
                                                 max_window_layers=0, rope_parameters=qwen_rope)
    yield "qwen2_window_past_last_layer", Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8,
                                                      max_window_layers=2, rope_parameters=dict(qwen_rope))


def randomize(model, seed):
    # transformers' 0.02-std init makes attention nearly uniform, where RoPE barely shows; unit-gain
    # fan-in scaling (as the C++ float64 reference does) keeps positions visible in the logits.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def toga(*args, check=True):
    r = subprocess.run([os.path.join(ROOT, "build", "toga"), *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"toga {' '.join(args)} failed:\n{r.stderr}")
    return r


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    work = tempfile.mkdtemp(prefix="toga-v5-")
    failed = False
    try:
        tok_dir = os.path.join(work, "stories-hf")
        toga("convert", STORIES, tok_dir)
        tokenizer_files = [f for f in os.listdir(tok_dir) if f.startswith("tokenizer")]

        def save(name, cfg, seed):
            d = os.path.join(work, name)
            cfg.architectures = [cfg.__class__.__name__.replace("Config", "ForCausalLM")]
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            randomize(model, seed)
            model.save_pretrained(d)
            for f in tokenizer_files:
                shutil.copy(os.path.join(tok_dir, f), d)
            return d

        for seed, (name, cfg) in enumerate(cases(), start=1):
            d = save(name, cfg, seed)
            saved = json.load(open(os.path.join(d, "config.json")))
            layout = {k: saved[k] for k in ("rope_parameters", "rope_theta", "rope_scaling", "layer_types",
                                            "sliding_window", "use_sliding_window") if k in saved}
            toga("eval", "logits", d, "--text", TEXT, "--out", os.path.join(work, name))
            meta = json.load(open(os.path.join(work, name + ".json")))
            ours = np.fromfile(os.path.join(work, name + ".f32"), dtype=np.float32).reshape(meta["shape"])
            theirs = logits_of(AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), meta["ids"])
            # The same weights with default RoPE (theta 10000, no scaling): what the bug computed.
            plain = json.loads(json.dumps(saved))
            plain["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(plain, f)
            wrong = logits_of(AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), meta["ids"])
            diff = float(np.abs(ours - theirs).max())
            ok = diff <= args.tolerance
            failed |= not ok
            print(f"{name}: {len(meta['ids'])} tokens, max |toga - transformers| {diff:.2e} "
                  f"({'ok' if ok else 'FAIL'}); default RoPE would differ by {float(np.abs(wrong - theirs).max()):.2e}")
            print(f"    config.json: {json.dumps(layout)}")

        # Qwen2 sliding only from layer 1 on: transformers runs two attention kinds, toga one.
        d = save("qwen2_mixed_window", Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8,
                                                      max_window_layers=1), 99)
        r = toga("eval", "logits", d, "--text", TEXT, "--out", os.path.join(work, "mixed"), check=False)
        msg = (r.stderr.strip().splitlines() or [""])[-1]
        ok = r.returncode != 0 and os.path.join(d, "config.json") in msg and "sliding" in msg
        failed |= not ok
        print(f"qwen2_mixed_window: {'refused' if ok else 'FAIL'}: {msg}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
