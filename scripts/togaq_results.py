#!/usr/bin/env python3
"""TOGA-q against the fixed-fraction (Atom-style) recipe at equal realized budget.

For each configuration: `toga quantize --method atom` with a fixed salient fraction, and
`toga search --mode quant` with the same quantizers, GPTQ, calibration and KV setting, its budget set
to the fixed fraction's realized weight bits. Both are evaluated on WikiText-2 test (perplexity over
the first PPL_WINDOWS windows, KLD and top-1 agreement against the FP model over the first
KLD_WINDOWS), with and without a KV4 cache. Writes docs/results/togaq_<model>.json, the per-layer
allocation figure docs/results/togaq_<model>_<config>_allocation.png, and the TOGA-q section of
docs/RESULTS.md (between its markers; quant_results.py keeps it).

    python3 scripts/togaq_results.py [--models smollm2] [--configs w4a4_s125] [--steps 150]
    python3 scripts/togaq_results.py --report-only

Every step is skipped when its output exists (delete the file to redo it).
"""
import argparse
import json
import os

from results_common import ROOT, SEARCH_MODELS, load, pyplot, run, write_section

BEGIN, END = "<!-- togaq:begin -->", "<!-- togaq:end -->"

MODELS = SEARCH_MODELS

# name -> (label, quantizer flags shared by both methods, fixed salient fraction). The Atom recipe's
# quantizers (groups of 128, clips 0.85 / 0.9, INT8 salient, GPTQ, KV4 in the checkpoint).
CONFIGS = {
    "w4a4_s125": ("W4A4 + INT8 salient (12.5% fixed vs learned)", ["--wbits", "4", "--abits", "4"], 0.125),
    "w3a3_s3": ("W3A3 + INT8 salient (3% fixed vs learned)", ["--wbits", "3", "--abits", "3"], 0.03),
    "w1.6a16": ("W1A16 + INT4 salient (20% fixed vs learned)",
                ["--wbits", "1", "--binary-centered", "--abits", "16", "--high-bits", "4"], 0.2),
}


def measure(args, m, c):
    spec, (label, flags, frac) = MODELS[m], CONFIGS[c]
    work = os.path.join(args.work, m)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    base, common = spec["path"], ["--threads", str(args.threads)]
    seq = ["--seqlen", str(spec["seqlen"])]
    atom = os.path.join(work, f"atom_{c}")
    atom_report = atom + ".quantize.json"
    if not os.path.exists(atom_report):
        run([args.toga, "quantize", base, atom, "--method", "atom", *flags, "--salient-frac", str(frac),
             *spec["calib"], "--report", atom_report, "--force", *common], log)
    budget = load(atom_report)["weight_bits_codes"]
    # One training run; its checkpoint is finalized twice: learned per-layer counts with the channels
    # of largest mean |x| (--select order, the default) and the logits' own channels (--select learned).
    ckpt = os.path.join(work, f"togaq_{c}.search.pt")
    for name, select in (("togaq", "order"), ("togaq_learned", "learned")):
        out = os.path.join(work, f"{name}_{c}")
        if not os.path.exists(os.path.join(out, "search.json")):
            run([args.toga, "search", base, out, "--mode", "quant", "--budget", repr(budget), "--method", "atom", *flags,
                 "--select", select, "--checkpoint", ckpt, "--steps", str(args.steps), "--batch", "2", "--seqlen", "512",
                 "--dtype", "bf16", *spec["calib"], "--force", *(["--resume"] if os.path.exists(ckpt) else []), *common],
                log)
    fp_ppl = os.path.join(work, "fp32.ppl.json")
    if not os.path.exists(fp_ppl):
        run([args.toga, "eval", "ppl", base, *seq, "--max-windows", str(spec["ppl_windows"]), "--json", fp_ppl, *common], log)
    for name, model in (("atom", atom), ("togaq", os.path.join(work, f"togaq_{c}")),
                        ("togaq_learned", os.path.join(work, f"togaq_learned_{c}"))):
        for kv in (16, 4):
            tag = os.path.join(work, f"{name}_{c}.kv{kv}")
            kvf = ["--kv-bits", str(kv)]
            if not os.path.exists(tag + ".ppl.json"):
                run([args.toga, "eval", "ppl", model, *seq, "--max-windows", str(spec["ppl_windows"]), "--json",
                     tag + ".ppl.json", *kvf, *common], log)
            if not os.path.exists(tag + ".kld.json"):
                run([args.toga, "eval", "kld", model, "--base", base, *seq, "--max-windows", str(spec["kld_windows"]),
                     "--json", tag + ".kld.json", *kvf, *common], log)


def collect(args, m):
    work = os.path.join(args.work, m)
    rows = []
    for c, (label, flags, frac) in CONFIGS.items():
        search_json = os.path.join(work, f"togaq_{c}", "search.json")
        if not os.path.exists(search_json):
            search_json = os.path.join(work, f"togaq_learned_{c}", "search.json")
        atom_report = os.path.join(work, f"atom_{c}.quantize.json")
        if not (os.path.exists(search_json) and os.path.exists(atom_report)):
            continue
        s = load(search_json)
        for name in ("atom", "togaq", "togaq_learned"):
            for kv in (16, 4):
                tag = os.path.join(work, f"{name}_{c}.kv{kv}")
                if not (os.path.exists(tag + ".ppl.json") and os.path.exists(tag + ".kld.json")):
                    continue
                p, k = load(tag + ".ppl.json")["result"], load(tag + ".kld.json")["result"]
                if name != "atom":
                    s = load(os.path.join(work, f"{name}_{c}", "search.json"))
                bits = load(atom_report)["weight_bits_codes"] if name == "atom" else s["budget"]["realized_bits"]
                rows.append({"config": c, "label": label, "method": name, "kv_bits": kv, "weight_bits": bits,
                             "ppl": p["ppl"], "ppl_windows": p["windows"], "kld_mean": k["mean_kld"],
                             "kld_p99": k["p99_kld"], "top1": k["top1_agreement"], "kld_windows": k["windows"],
                             "search": {"options": s["options"], "seconds": s["seconds"], "selection": s.get("selection", "learned"),
                                        "final_ce": s["curve"][-1]["ce"] if s["curve"] else None} if name != "atom" else None})
        plot_allocation(load(search_json), os.path.join(ROOT, "docs", "results", f"togaq_{m}_{c}_allocation.png"), frac,
                        f"{MODELS[m]['label']}, {label}")
    return rows


def plot_allocation(search, path, frac, title):
    """Salient fraction per layer and site type (the method's Figure 4), with the fixed fraction."""
    plt = pyplot()
    if plt is None:
        return
    kinds = ["attn_in", "o_in", "mlp_in", "down_in"]
    names = {"attn_in": "q/k/v input", "o_in": "o_proj input", "mlp_in": "gate/up input", "down_in": "down_proj input"}
    fig, ax = plt.subplots(figsize=(10, 4))
    for kind in kinds:
        pts = sorted((g["layer"], g["salient_count"] / g["channels"]) for g in search["layers"] if g["kind"] == kind)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=names[kind])
    ax.axhline(100 * frac, color="k", ls="--", lw=1, label=f"fixed fraction {100 * frac:g}%")
    ax.set_xlabel("layer")
    ax.set_ylabel("salient channels (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args):
    lines = [BEGIN, "", "## TOGA-q against the fixed fraction at equal budget", "",
             "Generated by `python3 scripts/togaq_results.py` (raw numbers: `docs/results/togaq_*.json`). Both methods use "
             "the Atom recipe's quantizers (reorder by mean |x|, groups of 128, weight clip 0.85, activation clip 0.9, INT8 "
             "salient part, GPTQ) and the same calibration; the fixed-fraction row keeps the same share of channels in "
             "every layer; TOGA-q (`toga search --mode quant`, budget = the fixed row's realized weight bits, met from "
             "below) learns per layer how many, and its one search is finalized twice: with the channels of largest mean "
             "|x| (`--select order`, the default) and with the logits' own channels (`--select learned`). One search per "
             "configuration, 150 steps of 2 x 512 tokens (SmolLM2: 13.5 min in bf16 on 2 cores), seed 0: differences of a "
             "few percent are within what another seed could change. KV4 rows evaluate the same checkpoints with a 4-bit KV cache. "
             "Perplexity: WikiText-2 test, first windows of the model's seqlen; KLD / top-1 against the FP model "
             "(on stories260K read KLD, not WikiText-2 perplexity: see its section above).", "",
             "**Reading.** On SmolLM2 at W4A4 + 12.5 % the learned per-layer counts beat the fixed fraction on every "
             "measure (ppl 28.41 → 27.80, KLD 0.286 → 0.269, top-1 +0.85 points; with KV4 33.01 → 32.07): the search "
             "moves INT8 channels from the gate/up inputs (3,072 weight rows per channel, the most expensive) to the "
             "o_proj and down_proj inputs (576 rows) and to the first and last layers. Letting the logits also pick "
             "the channels is far worse there (KLD 0.618): with ~150k training tokens the per-channel signal of all "
             "but the outlier channels is rounding noise. On stories260K the picture is mixed: counts + order win "
             "at W4A4 (KLD 0.431 → 0.423), lose at W3A3 (1.800 → 1.848), and at W(1.6)A16 (weight-only, 1-bit) the "
             "logits' own channels win clearly (KLD 2.139 → 1.883). On SmolLM2 at W(3.2)A(3.2) (INT3 + ~3 % INT8) "
             "the learned counts win again: ppl 110.25 → 98.94, KLD 1.631 → 1.569, top-1 38.07 → 38.54 % (KV16; "
             "KV4 139.59 → 123.66, KLD 1.865 → 1.794), and the logits' own channels lose badly (ppl 340.5). "
             "Differences of a few percent need the caveat of docs/EVALUATION.md: a W4A4 evaluation moves by "
             "about that much with float rounding alone (1 vs 2 threads) on short texts; over 32 windows of "
             "2048 it averages down. Still to do (issue 18 stays open): W(1.6)A16 on SmolLM2, the six-task "
             "zero-shot average, seeds and longer searches.", ""]
    for m in args.models:
        rows = collect(args, m)
        with open(os.path.join(ROOT, "docs", "results", f"togaq_{m}.json"), "w") as f:
            json.dump({"model": MODELS[m]["label"], "rows": rows}, f, indent=2)
        if not rows:
            continue
        spec = MODELS[m]
        fp = os.path.join(args.work, m, "fp32.ppl.json")
        fp_line = f" FP32 over the same windows: ppl {load(fp)['result']['ppl']:.3f}." if os.path.exists(fp) else ""
        lines += [f"### {spec['label']}", "",
                  f"Perplexity over the first {rows[0]['ppl_windows']} windows of {spec['seqlen']}; KLD over the first "
                  f"{rows[0]['kld_windows']}.{fp_line}", "",
                  "| configuration | method | weight bits | KV bits | WikiText-2 ppl | mean KLD | p99 KLD | top-1 agree % |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            method = "fixed fraction (Atom)" if r["method"] == "atom" else \
                (f"TOGA-q, learned counts + mean-|x| channels ({r['search']['options']['steps']} steps)"
                 if r["search"]["selection"] == "order" else "TOGA-q, learned counts and channels (same search)")
            lines.append(f"| {r['label']} | {method} | {r['weight_bits']:.4f} | {r['kv_bits']} | {r['ppl']:.3f} | "
                         f"{r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {100 * r['top1']:.2f} |")
        for c in CONFIGS:
            png = f"results/togaq_{m}_{c}_allocation.png"
            if os.path.exists(os.path.join(ROOT, "docs", png)):
                lines += ["", f"![salient allocation, {c}]({png})"]
        lines.append("")
    lines.append(END)
    write_section(os.path.join(ROOT, "docs", "RESULTS.md"), BEGIN, END, lines)
    print("wrote docs/RESULTS.md (TOGA-q section)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2")
    ap.add_argument("--configs", default="w4a4_s125")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--toga", default=os.path.join(ROOT, "build", "toga"))
    ap.add_argument("--work", default=os.path.join(ROOT, "out", "togaq"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.models = args.models.split(",")
    if not args.report_only:
        for m in args.models:
            for c in args.configs.split(","):
                measure(args, m, c)
    report(args)


if __name__ == "__main__":
    main()
