#!/usr/bin/env python3
"""Runs lm-evaluation-harness (HF transformers backend) on the shared task files and compares it
item by item with `toga eval tasks --dump-items`.

The harness reads the same files as toga: this script parses them independently of toga's C++
loaders into the layouts the harness's own task configs expect (ai2_arc, super_glue/boolq,
winogrande, cais/mmlu), and writes task YAMLs that `include` the harness's shipped configs, so the
templates, choices, targets and metrics are the harness's own. HellaSwag is the exception: the shared
file has lost the ctx_a/ctx_b split, so its query is the harness's preprocess() of the file's context
line and its choices the preprocessed endings (the harness's own process_docs cannot run on it).
Nothing is downloaded: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set.

Environment: the git-ignored venv .venv-oracle (python3 -m venv .venv-oracle &&
.venv-oracle/bin/pip install torch transformers lm-eval). The model directory comes from
`toga convert ../shared/data/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf DIR`.

Usage:
  .venv-oracle/bin/python scripts/lm_eval_compare.py --model-dir out/smollm2-hf \
      --tasks arc_easy,arc_challenge,boolq,hellaswag,winogrande,mmlu [--limit N] \
      --toga-items out/toga_items.jsonl --out out/lm_eval --json docs/results/lm_eval_agreement.json
  (--harness-only runs the harness without comparing; --compare-only reuses --out's saved samples.)
"""
import argparse
import bz2
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STANDARD = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "winogrande", "mmlu"]
ACC_NORM_TASKS = {"arc_easy", "arc_challenge", "hellaswag"}


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def harness_dir():
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def build_tasks(data, out, tasks):
    """Writes docs in the harness's dataset layouts and YAMLs including the harness's configs."""
    tdir = out / "tasks"
    ddir = out / "data"
    tdir.mkdir(parents=True, exist_ok=True)
    ddir.mkdir(parents=True, exist_ok=True)
    hd = harness_dir()
    names = {}  # our task name -> harness task (or group) name

    def yaml(name, body):
        (tdir / f"{name}.yaml").write_text(body, encoding="utf-8")

    def json_dataset(files):
        lines = ["dataset_path: json", "dataset_name: null", "dataset_kwargs:", "  data_files:"]
        lines += [f"    {k}: {json.dumps(str(v))}" for k, v in files.items()]
        return "\n".join(lines) + "\n"

    for t in tasks:
        if t in ("arc_easy", "arc_challenge"):
            src = data / "tasks/arc" / ("ARC-Easy-Test.jsonl" if t == "arc_easy" else "ARC-Challenge-Test.jsonl")
            docs = []
            for r in read_jsonl(src):
                ch = r["question"]["choices"]
                docs.append({"id": r["id"], "question": r["question"]["stem"],
                             "choices": {"text": [c["text"] for c in ch], "label": [c["label"] for c in ch]},
                             "answerKey": r["answerKey"]})
            write_jsonl(ddir / f"{t}.jsonl", docs)
            yaml(f"toga_{t}", f"include: {hd / 'arc' / (t + '.yaml')}\ntask: toga_{t}\ntag: []\n"
                 + json_dataset({"test": ddir / f"{t}.jsonl"})
                 + "training_split: null\nvalidation_split: null\ntest_split: test\n")
        elif t == "boolq":
            docs = []
            for r in read_jsonl(data / "tasks/boolq/val.jsonl"):
                lab = r["label"]
                lab = {"true": 1, "false": 0}[lab.lower()] if isinstance(lab, str) else int(lab)
                docs.append({"question": r["question"], "passage": r["passage"], "idx": r.get("idx"), "label": lab})
            write_jsonl(ddir / "boolq.jsonl", docs)
            yaml("toga_boolq", f"include: {hd / 'super_glue/boolq/default.yaml'}\ntask: toga_boolq\ntag: []\n"
                 + json_dataset({"validation": ddir / "boolq.jsonl"}) + "training_split: null\nvalidation_split: validation\n")
        elif t == "hellaswag":
            sys.path.insert(0, str(hd / "hellaswag"))
            from utils import preprocess  # the harness's own HellaSwag preprocess()

            sys.path.pop(0)
            lines = bz2.open(data / "tasks/hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8").read().split("\n")
            while lines and lines[-1] == "":
                lines.pop()
            assert len(lines) % 6 == 0
            docs = []
            for i in range(0, len(lines), 6):
                docs.append({"ind": i // 6, "query": preprocess(lines[i]), "label": lines[i + 1],
                             "choices": [preprocess(e) for e in lines[i + 2:i + 6]]})
            write_jsonl(ddir / "hellaswag.jsonl", docs)
            yaml("toga_hellaswag", f"include: {hd / 'hellaswag/hellaswag.yaml'}\ntask: toga_hellaswag\ntag: []\n"
                 + json_dataset({"validation": ddir / "hellaswag.jsonl"})
                 + "process_docs: null\ntraining_split: null\nvalidation_split: validation\ntest_split: null\n")
        elif t == "winogrande":
            recs = read_jsonl(data / "tasks/winogrande/dev.jsonl")
            labels = [l.strip() for l in open(data / "tasks/winogrande/dev-labels.lst") if l.strip()]
            assert len(labels) == len(recs)
            docs = []
            for r, lab in zip(recs, labels):
                assert str(r.get("answer", lab)) == lab
                docs.append({"qID": r["qID"], "sentence": r["sentence"], "option1": r["option1"],
                             "option2": r["option2"], "answer": lab})
            write_jsonl(ddir / "winogrande.jsonl", docs)
            yaml("toga_winogrande", f"include: {hd / 'winogrande/default.yaml'}\ntask: toga_winogrande\ntag: []\n"
                 + json_dataset({"validation": ddir / "winogrande.jsonl"}) + "training_split: null\nvalidation_split: validation\n")
        elif t == "mmlu":
            mdir = data / "tasks/mmlu"
            cats = {}
            for f in sorted((mdir / "test").glob("*_test.csv")):
                s = f.name[: -len("_test.csv")]
                sub_yaml = hd / "mmlu/default" / f"mmlu_{s}.yaml"
                cat = "other"
                for line in sub_yaml.read_text().splitlines():
                    if line.startswith('"tag"'):
                        cat = line.split('"mmlu_')[1].rsplit("_tasks", 1)[0]
                cats.setdefault(cat, []).append(s)
                for split in ("test", "dev"):
                    with open(mdir / split / f"{s}_{split}.csv", newline="", encoding="utf-8") as fh:
                        rows = list(csv.reader(fh))
                    docs = [{"question": r[0], "subject": s, "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
                            for r in rows]
                    write_jsonl(ddir / f"mmlu_{s}_{split}.jsonl", docs)
                desc = json.dumps(f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n")
                yaml(f"toga_mmlu_{s}", f"include: {hd / 'mmlu/default/_default_template_yaml'}\ntask: toga_mmlu_{s}\n"
                     f"description: {desc}\n"
                     + json_dataset({"test": ddir / f"mmlu_{s}_test.jsonl", "dev": ddir / f"mmlu_{s}_dev.jsonl"}))
            # The harness's grouping: subjects -> 4 categories -> mmlu, means weighted by size.
            for cat, subs in cats.items():
                yaml(f"toga_mmlu_{cat}", f"group: toga_mmlu_{cat}\ntask:\n" + "".join(f"  - toga_mmlu_{s}\n" for s in subs)
                     + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\nmetadata:\n  version: 2\n")
            yaml("toga_mmlu", "group: toga_mmlu\ntask:\n" + "".join(f"  - toga_mmlu_{c}\n" for c in sorted(cats))
                 + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\nmetadata:\n  version: 2\n")
        else:
            raise SystemExit(f"unknown task {t}")
        names[t] = f"toga_{t}"
    return names


def run_harness(args, names, out):
    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(args.threads)
    lm = HFLM(pretrained=args.model_dir, dtype="float32", device="cpu", batch_size=args.batch_size)
    tm = TaskManager(include_path=str(out / "tasks"))
    t0 = time.time()
    res = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), task_manager=tm, limit=args.limit or None,
                                  log_samples=True, num_fewshot=args.fewshot or None, random_seed=0,
                                  numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234)
    wall = time.time() - t0
    samples = {}
    for task, lst in res["samples"].items():
        samples[task] = [{"doc_id": s["doc_id"],
                          "ll": [float(r[0]) for r in s["filtered_resps"]],
                          "is_greedy": [bool(r[1]) for r in s["filtered_resps"]],
                          "target": s["target"], "acc": s.get("acc"), "acc_norm": s.get("acc_norm")}
                         for s in lst]
    summary = {"results": res["results"], "groups": res.get("groups", {}), "wall_seconds": wall,
               "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.x",
               "torch_threads": args.threads, "batch_size": args.batch_size, "limit": args.limit}
    (out / "harness_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "harness_samples.json").write_text(json.dumps(samples))
    print(f"harness wall time {wall:.1f} s", flush=True)
    return summary, samples


def compare(args, names, summary, samples):
    toga = {}
    for r in read_jsonl(args.toga_items):
        key = (r["task"], r["subject"], r["doc_index"])
        toga[key] = r
    report = {"tasks": {}, "harness_wall_seconds": summary["wall_seconds"]}
    for t, hname in names.items():
        subtasks = [hname] if t != "mmlu" else sorted(k for k in samples if k.startswith("toga_mmlu_"))
        n = mism = mism_norm = 0
        max_dll = 0.0
        worst = None
        acc = {"toga": 0, "harness": 0}
        accn = {"toga": 0, "harness": 0}
        for st in subtasks:
            subject = st[len("toga_mmlu_"):] if t == "mmlu" else ""
            for s in samples.get(st, []):
                key = (t, subject, s["doc_id"])
                if key not in toga:
                    raise SystemExit(f"toga's items lack {key}: run toga with the same --tasks/--limit")
                g = toga[key]
                hl = s["ll"]
                if len(hl) != len(g["ll"]):
                    raise SystemExit(f"{key}: {len(hl)} harness choices vs {len(g['ll'])} toga choices")
                for a, b in zip(hl, g["ll"]):
                    d = abs(a - b)
                    if d > max_dll:
                        max_dll, worst = d, {"key": list(key), "harness": hl, "toga": g["ll"]}
                h_pred = max(range(len(hl)), key=lambda i: (hl[i], -i))
                lens = g["choice_len"]
                h_pred_norm = max(range(len(hl)), key=lambda i: (hl[i] / lens[i], -i))
                mism += h_pred != g["pred"]
                mism_norm += h_pred_norm != g["pred_norm"]
                acc["harness"] += s["acc"] if s["acc"] is not None else 0
                acc["toga"] += int(g["pred"] == g["label"])
                if s.get("acc_norm") is not None:
                    accn["harness"] += s["acc_norm"]
                accn["toga"] += int(g["pred_norm"] == g["label"])
                n += 1
        rec = {"n": n, "max_abs_dll": max_dll, "pred_mismatches": mism, "pred_norm_mismatches": mism_norm,
               "toga_acc": acc["toga"] / max(n, 1), "harness_acc": acc["harness"] / max(n, 1), "worst": worst}
        if t in ACC_NORM_TASKS:
            rec["toga_acc_norm"] = accn["toga"] / max(n, 1)
            rec["harness_acc_norm"] = accn["harness"] / max(n, 1)
        hres = summary["results"].get(hname, {})
        rec["harness_reported"] = {k: v for k, v in hres.items() if isinstance(v, (int, float))}
        report["tasks"][t] = rec
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data"))
    ap.add_argument("--tasks", default=",".join(STANDARD))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--fewshot", type=int, default=0)
    ap.add_argument("--toga-items")
    ap.add_argument("--out", default="out/lm_eval")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--harness-only", action="store_true")
    ap.add_argument("--compare-only", action="store_true")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if tasks == ["all"]:
        tasks = STANDARD
    out = Path(args.out)
    names = build_tasks(Path(args.data), out, tasks)
    if args.compare_only:
        summary = json.loads((out / "harness_summary.json").read_text())
        samples = json.loads((out / "harness_samples.json").read_text())
    else:
        summary, samples = run_harness(args, names, out)
    if args.harness_only:
        return
    if not args.toga_items:
        raise SystemExit("--toga-items is required to compare")
    report = compare(args, names, summary, samples)
    report.update({"model_dir": args.model_dir, "limit": args.limit or None, "fewshot": args.fewshot})
    print("| task | n | toga acc | harness acc | toga acc_norm | harness acc_norm | max abs dll | pred mismatches |")
    print("|---|---|---|---|---|---|---|---|")
    for t, r in report["tasks"].items():
        an = (f"{100 * r['toga_acc_norm']:.2f} | {100 * r['harness_acc_norm']:.2f}" if "toga_acc_norm" in r else "- | -")
        print(f"| {t} | {r['n']} | {100 * r['toga_acc']:.2f} | {100 * r['harness_acc']:.2f} | {an} | "
              f"{r['max_abs_dll']:.2e} | {r['pred_mismatches']} / {r['pred_norm_mismatches']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
