#!/usr/bin/env python3
"""Cross-checks toga against Hugging Face transformers loading the same SmolLM2 GGUF
(`from_pretrained(dir, gguf_file=...)`): WikiText-2 token count, logits on a handful of prompts, and
perplexity with the GPTQ protocol. Not a CI test: it needs torch, transformers and gguf from PyPI
(large downloads). Set up once:

    python3 -m venv .venv-oracle && .venv-oracle/bin/pip install torch transformers accelerate gguf
    .venv-oracle/bin/python scripts/crosscheck_transformers.py [--max-windows N]

transformers' GGUF loader rebuilds this tokenizer without the digit split (see the model's README),
so the script restores the faithful pre-tokenizer (Digits(individual) + ByteLevel) before comparing.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
GGUF_DIR = os.path.join(SHARED, "models", "smollm2-135m-instruct")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "In 1889, 12 engineers built a tower of 324 metres in Paris.",
    "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n<|im_start|>assistant\n",
    " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 )",
]


def gptq_wikitext(path):
    # RECIPES.md: rows are the lines with their "\n", whitespace-only lines become "", joined by "\n\n".
    with open(path, encoding="utf-8") as f:
        rows = ["" if line.strip() == "" else line for line in f]
    return "\n\n".join(rows)


def toga(*args):
    exe = os.path.join(ROOT, "build", "toga")
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"toga {' '.join(args)} failed:\n{r.stderr}")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-windows", type=int, default=0, help="perplexity windows (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "crosscheck_transformers.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, torch_dtype=torch.float32)
    model.eval()
    gguf_path = os.path.join(GGUF_DIR, GGUF_NAME)
    result = {"model": os.path.relpath(gguf_path, ROOT), "transformers": __import__("transformers").__version__,
              "torch": torch.__version__, "prompts": []}

    # Logits on a handful of prompts (ids must agree first).
    tmp = os.path.join(ROOT, "out", "crosscheck")
    os.makedirs(tmp, exist_ok=True)
    worst = 0.0
    for i, text in enumerate(PROMPTS):
        prefix = os.path.join(tmp, f"prompt{i}")
        toga("eval", "logits", gguf_path, "--text", text, "--special", "--out", prefix, "--force",
             "--threads", str(args.threads))
        meta = json.load(open(prefix + ".json"))
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ours = np.fromfile(prefix + ".f32", dtype=np.float32).reshape(meta["shape"])
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].float().numpy()
        same_ids = ids == meta["ids"]
        diff = float(np.abs(ours - theirs).max()) if same_ids else float("nan")
        worst = max(worst, diff) if same_ids else worst
        agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean()) if same_ids else float("nan")
        result["prompts"].append({"text": text, "tokens": len(ids), "same_ids": same_ids,
                                  "max_abs_logit_diff": diff, "max_abs_logit": float(np.abs(theirs).max()),
                                  "argmax_agreement": agree})
        print(f"prompt {i}: {len(ids)} tokens, ids equal: {same_ids}, max |Δlogit| {diff:.2e}, argmax agree {agree}")

    # WikiText-2 test, GPTQ protocol: token count and perplexity.
    text = gptq_wikitext(os.path.join(SHARED, "text", "wikitext-2-raw", "wiki.test.raw"))
    enc = tok(text, add_special_tokens=False)["input_ids"]
    seqlen = 2048
    n = len(enc) // seqlen
    if args.max_windows:
        n = min(n, args.max_windows)
    t0 = time.time()
    nll = 0.0
    with torch.no_grad():
        for w in range(n):
            ids = torch.tensor([enc[w * seqlen:(w + 1) * seqlen]])
            logits = model(ids).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
            print(f"\rtransformers ppl window {w + 1}/{n}: {math.exp(nll / (w + 1)):.4f}", end="", flush=True)
    print()
    hf_ppl = math.exp(nll / n)
    hf_seconds = time.time() - t0
    ppl_json = os.path.join(tmp, "toga_ppl.json")
    toga("eval", "ppl", gguf_path, "--seqlen", str(seqlen), "--max-windows", str(n), "--json", ppl_json, "--force",
         "--threads", str(args.threads))
    ours = json.load(open(ppl_json))["result"]
    result["wikitext2_test"] = {"hf_tokens": len(enc), "toga_tokens": ours["tokens_total"], "windows": n,
                                "seqlen": seqlen, "hf_ppl": hf_ppl, "toga_ppl": ours["ppl"],
                                "abs_diff": abs(hf_ppl - ours["ppl"]), "hf_seconds": hf_seconds,
                                "toga_seconds": ours["seconds"]}
    result["max_abs_logit_diff"] = worst
    print(json.dumps(result["wikitext2_test"], indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
