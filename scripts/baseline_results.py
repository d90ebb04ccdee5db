#!/usr/bin/env python3
"""The other baselines on SmolLM2 at equal settings (issue 21): weight-only ultra-low bits (SliM-LLM
and GPTQ at 2 and 3 bits, BiLLM, PTQ1.61) and W4A4KV4 with 50 % sparsity on SpinQuant's front end
(OBR-GPTQ, OBR-RTN, SparseGPT+GPTQ, unstructured and 2:4), and the rotation rows of tables (b) and
(c) (SpinQuant, Atom-style and ResQ at W(3.2)A(3.2) and W4A4KV4). TOGA-q's rows come from
scripts/togaq_results.py. One calibration, one evaluation protocol
for every row (results_common.SEARCH_MODELS["smollm2"]: 16 x 2048 calibration tokens, WikiText-2
perplexity over the first 32 windows of 2048, KLD and top-1 agreement against the FP model over the
first 4), `toga quantize`'s wall time, and the realized bits with every stored parameter counted.

Resumable: each step writes its JSON under --work (default out/baselines) and is skipped when it
exists. Usage:

    python3 scripts/baseline_results.py [--rows slim_w2,gptq_w2] [--toga build/toga] [--threads 2]
    python3 scripts/baseline_results.py --report-only   # docs/results/baselines_smollm2.json + RESULTS.md
"""
import argparse
import json
import os

from results_common import ROOT, SEARCH_MODELS, load, pyplot, run, write_section

SPEC = SEARCH_MODELS["smollm2"]
W4A4KV4_SPARSE = []  # the obr / spinquant recipes' defaults are W4 per channel (w_clip), A4 per token, KV4

# name -> (table, label, published ordering group, toga quantize flags)
ROWS = [
    ("gptq_w3", "a", "GPTQ W3 g128 (asym)", ["--method", "gptq", "--wbits", "3", "--group-size", "128", "--asym"]),
    ("slim_w3", "a", "SliM-LLM W3 g128", ["--method", "slim-llm", "--wbits", "3"]),
    ("gptq_w2", "a", "GPTQ W2 g128 (asym)", ["--method", "gptq", "--wbits", "2", "--group-size", "128", "--asym"]),
    ("slim_w2", "a", "SliM-LLM W2 g128", ["--method", "slim-llm", "--wbits", "2"]),
    ("billm", "a", "BiLLM (1.08 bits as its paper counts; timed by an earlier build)", ["--method", "billm"]),
    ("ptq161", "a", "PTQ1.61 W(1.6)A16, no LoRA preprocessing, 2 refinement epochs (recipe: 20)",
     ["--method", "ptq161", "--refine-epochs", "2"]),
    # (b) weight-activation ultra-low: INT3 with 4 % of the channels at INT8 = W(3.2)A(3.2).
    ("spinquant_w3a3", "b", "SpinQuant W3A3KV4", ["--method", "spinquant", "--wbits", "3", "--abits", "3"]),
    ("atom_w3a3", "b", "Atom-style W(3.2)A(3.2)", ["--method", "atom", "--wbits", "3", "--abits", "3", "--salient-frac", "0.04"]),
    ("resq_w3a3", "b", "ResQ W(3.2)A(3.2)", ["--method", "resq", "--wbits", "3", "--abits", "3", "--salient-frac", "0.04"]),
    # (c) INT4 + INT8 with KV4 (the recipes' defaults).
    ("spinquant_w4a4", "c", "SpinQuant W4A4KV4", ["--method", "spinquant"]),
    ("atom_w4a4", "c", "Atom-style W4A4KV4, 12.5% INT8", ["--method", "atom"]),
    ("resq_w4a4", "c", "ResQ W4A4KV4, 12.5% INT8", ["--method", "resq"]),
    ("sparsegpt_spin", "d", "SparseGPT+GPTQ 50% (SpinQuant front end)", ["--method", "spinquant", "--sparsity", "0.5"]),
    ("obr_rtn", "d", "OBR-RTN 50%", ["--method", "obr-rtn"]),
    ("obr_gptq", "d", "OBR-GPTQ 50%", ["--method", "obr"]),
    ("sparsegpt_spin_24", "d", "SparseGPT+GPTQ 2:4 (SpinQuant front end)",
     ["--method", "spinquant", "--sparsity-pattern", "2:4"]),
    ("obr_gptq_24", "d", "OBR-GPTQ 2:4", ["--method", "obr", "--sparsity-pattern", "2:4"]),
]

# (better, worse): the published orderings this table checks.
ORDERINGS = [("slim_w2", "gptq_w2"), ("slim_w3", "gptq_w3"), ("billm", "gptq_w2"), ("resq_w3a3", "atom_w3a3"),
             ("obr_gptq", "sparsegpt_spin"), ("obr_gptq_24", "sparsegpt_spin_24")]


def measure(args):
    work = args.work
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    base = SPEC["path"]
    common = ["--threads", str(args.threads)]
    for name, _, _, flags in ROWS:
        if args.rows and name not in args.rows:
            continue
        ckpt, report = os.path.join(work, name), os.path.join(work, name + ".quantize.json")
        if not os.path.exists(report):
            run([args.toga, "quantize", base, ckpt, *flags, *SPEC["calib"], "--report", report, "--force", *common], log)
        ppl, kld = os.path.join(work, name + ".ppl.json"), os.path.join(work, name + ".kld.json")
        if not os.path.exists(ppl):
            run([args.toga, "eval", "ppl", ckpt, "--seqlen", str(SPEC["seqlen"]), "--max-windows",
                 str(SPEC["ppl_windows"]), "--json", ppl, *common], log)
        if not os.path.exists(kld):
            run([args.toga, "eval", "kld", ckpt, "--base", base, "--seqlen", str(SPEC["seqlen"]), "--max-windows",
                 str(SPEC["kld_windows"]), "--json", kld, *common], log)


def collect(work):
    rows = {}
    for name, table, label, flags in ROWS:
        files = [os.path.join(work, name + s) for s in (".quantize.json", ".ppl.json", ".kld.json")]
        if not all(os.path.exists(f) for f in files):
            continue
        q, p, k = (load(f) for f in files)
        layers = q.get("layers", [])
        kept = [l["details"]["kept"] for l in layers if "kept" in l.get("details", {})]
        rows[name] = {"table": table, "label": label, "flags": flags, "scheme": q["scheme"],
                      "weight_bits_codes": q["weight_bits_codes"], "weight_bits_total": q["weight_bits_total"],
                      "act_bits": q["act_bits"], "method_bits": q.get("method_bits", {}),
                      "kept_fraction": sum(kept) / len(kept) if kept else None,
                      "quantize_seconds": q["seconds"], "ppl": p["result"]["ppl"], "ppl_windows": p["result"]["windows"],
                      "kld_mean": k["result"]["mean_kld"], "top1": k["result"]["top1_agreement"],
                      "kld_windows": k["result"]["windows"]}
    return rows


def plot(rows, path):
    """Mean KLD against the bits a checkpoint stores per weight (every parameter counted), one
    marker per table: where each method sits on the size / fidelity plane."""
    plt = pyplot()
    if plt is None or not rows:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"a": "o", "b": "s", "c": "^", "d": "x"}
    for name, r in rows.items():
        ax.scatter(r["weight_bits_total"], r["kld_mean"], marker=markers[r["table"]])
        ax.annotate(r["label"].split(",")[0].split(" (")[0], (r["weight_bits_total"], r["kld_mean"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 2))
    ax.set_yscale("log")
    xs = [r["weight_bits_total"] for r in rows.values()]
    ax.set_xlim(min(xs) - 0.2, max(xs) + 0.8)
    ax.set_xlabel("stored bits per weight (codes + every parameter)")
    ax.set_ylabel("mean KLD to the FP model (log)")
    ax.set_title("SmolLM2-135M baselines (o weight-only, s/^ W-A, x 50% sparse)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)
    return True


def report(args):
    rows = collect(args.work)
    fp = os.path.join(ROOT, "docs/results/smollm2_wikitext2_ppl_full.json")
    orderings = []
    for better, worse in ORDERINGS:
        if better in rows and worse in rows:
            b, w = rows[better], rows[worse]
            orderings.append({"better": better, "worse": worse, "holds_ppl": b["ppl"] < w["ppl"],
                              "holds_kld": b["kld_mean"] < w["kld_mean"]})
    out = {"model": SPEC["label"], "protocol": {"calib": SPEC["calib"], "seqlen": SPEC["seqlen"],
                                                "ppl_windows": SPEC["ppl_windows"], "kld_windows": SPEC["kld_windows"],
                                                "threads": args.threads},
           "rows": rows, "orderings": orderings}
    if os.path.exists(fp):
        out["fp_ppl_full_test"] = load(fp)
    path = os.path.join(ROOT, "docs/results/baselines_smollm2.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    begin, end = "<!-- baselines:begin -->", "<!-- baselines:end -->"
    lines = [begin, "## The other baselines on SmolLM2 (issue 21; `scripts/baseline_results.py`)", "",
             f"Calibration {' '.join(SPEC['calib'])}; WikiText-2 perplexity over the first {SPEC['ppl_windows']} "
             f"windows of {SPEC['seqlen']}; KLD and top-1 agreement against the FP model over the first "
             f"{SPEC['kld_windows']}; weight bits are the stored codes / with every stored parameter (fp16 scales, "
             "zero points, codebook levels, column scales, permutations); sparse rows store their zeros as codes "
             "(a sparse format would store about half the codes plus a mask). JSON: "
             "docs/results/baselines_smollm2.json.", ""]
    for table, title in (("a", "(a) weight-only, ultra-low bits"), ("b", "(b) weight-activation, ultra-low bits"),
                         ("c", "(c) INT4 + INT8 with KV4"), ("d", "(d) W4A4KV4 + 50% sparsity, SpinQuant front end")):
        lines += [f"**{title}**", "", "| method | scheme | weight bits (codes / total) | act bits | WikiText-2 ppl | "
                  "mean KLD | top-1 agree % | quantize time |", "|---|---|---|---|---|---|---|---|"]
        for name, t, label, _ in ROWS:
            if t != table:
                continue
            r = rows.get(name)
            if r is None:
                lines.append(f"| {label} | not measured yet | | | | | | |")
                continue
            lines.append(f"| {label} | {r['scheme']} | {r['weight_bits_codes']:.3f} / {r['weight_bits_total']:.3f} | "
                         f"{r['act_bits']:.2f} | {r['ppl']:.2f} | {r['kld_mean']:.4f} | {100 * r['top1']:.2f} | "
                         f"{r['quantize_seconds']:.0f} s |")
        lines.append("")
    if orderings:
        lines += ["Published orderings on this model (lower ppl and KLD is better):", ""]
        for o in orderings:
            verdict = "holds" if o["holds_ppl"] and o["holds_kld"] else "inverts" if not (o["holds_ppl"] or o["holds_kld"]) else "mixed"
            lines.append(f"- {rows[o['better']]['label']} < {rows[o['worse']]['label']}: {verdict} "
                         f"(ppl {rows[o['better']]['ppl']:.2f} vs {rows[o['worse']]['ppl']:.2f}, KLD "
                         f"{rows[o['better']]['kld_mean']:.4f} vs {rows[o['worse']]['kld_mean']:.4f})")
        lines.append("")
    if plot(rows, os.path.join(ROOT, "docs/results/baselines_smollm2.png")):
        lines.insert(-1, "![KLD against stored bits](results/baselines_smollm2.png)")
        lines.insert(-1, "")
    lines.append(end)
    write_section(os.path.join(ROOT, "docs/RESULTS.md"), begin, end, lines)
    print(f"wrote {path} and docs/RESULTS.md ({len(rows)} rows)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toga", default=os.path.join(ROOT, "build/toga"))
    ap.add_argument("--work", default=os.path.join(ROOT, "out/baselines"))
    ap.add_argument("--rows", type=lambda s: s.split(","), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        measure(args)
    report(args)


if __name__ == "__main__":
    main()
