#!/usr/bin/env python3
"""Hugging Face `tokenizers` oracle for toga's byte-level BPE (run by tests/tokenizer/test_bpe_hf.cpp).

Builds reference tokenizers from the vocabulary and merges of a GGUF file (read with the standard
library by gguf_vocab.py, not by toga) with each pre-tokenizer toga implements, encodes the strings
it is given, and writes the ids back:

  usage: hf_bpe_oracle.py REQUEST.json RESPONSE.json

REQUEST: {"gguf": path, "strings": [...], "exported": {label: tokenizer.json path}, "wikitext": path or ""}
RESPONSE: {"<pre>": {"plain": [[ids]], "special": [[ids]]} for pre in smollm, gpt2, llama3, qwen2,
           "exported": {label: [[ids]]} (tokenizer.json files toga wrote, loaded by `tokenizers`, encoded
           with add_special_tokens=True), "exported_decoded": {label: [decode(ids, skip_special_tokens=False)]},
           "wikitext_smollm_tokens": n}

Exit status 3 when the `tokenizers` package is missing (the test then skips).
"""
import json
import os
import sys

try:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
except ImportError:
    sys.stderr.write("the Python package `tokenizers` is not installed\n")
    sys.exit(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_vocab  # noqa: E402

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def build(meta, pre, with_special):
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama3")))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre == "gpt2":
        tok.pre_tokenizer = byte_level
    else:
        regex = LLAMA3 if pre == "llama3" else QWEN2
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    if with_special:
        types = meta["tokenizer.ggml.token_type"]
        tok.add_special_tokens(
            [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3])
    return tok


def gptq_wikitext(path):
    # RECIPES.md "Perplexity protocol": rows are the lines with their "\n", white-space-only rows
    # become "", joined with "\n\n".
    with open(path, encoding="utf-8", newline="") as f:
        rows = ["" if line.strip() == "" else line for line in f]
    return "\n\n".join(rows)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        req = json.load(f)
    meta = gguf_vocab.read_metadata(req["gguf"])
    strings = req["strings"]
    out = {}
    for pre in ("smollm", "gpt2", "llama3", "qwen2"):
        out[pre] = {}
        for mode, special in (("plain", False), ("special", True)):
            tok = build(meta, pre, special)
            out[pre][mode] = [e.ids for e in tok.encode_batch(strings, add_special_tokens=False)]
    out["exported"] = {}
    out["exported_decoded"] = {}
    for label, path in req.get("exported", {}).items():
        exported = Tokenizer.from_file(path)
        encs = exported.encode_batch(strings, add_special_tokens=True)
        out["exported"][label] = [e.ids for e in encs]
        out["exported_decoded"][label] = [exported.decode(e.ids, skip_special_tokens=False) for e in encs]
    if req.get("wikitext"):
        tok = build(meta, "smollm", False)
        out["wikitext_smollm_tokens"] = len(tok.encode(gptq_wikitext(req["wikitext"]), add_special_tokens=False).ids)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
