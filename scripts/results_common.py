"""Helpers shared by the results scripts (quant_results.py, zero_shot_results.py, togaq_results.py, joint_results.py)."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

# The two models every search result is reported on, with their evaluation protocol: perplexity
# over the first ppl_windows windows of seqlen, KLD over the first kld_windows, calibration flags.
SEARCH_MODELS = {
    "smollm2": {"path": os.path.join(SHARED, "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
                "label": "SmolLM2-135M-Instruct", "seqlen": 2048, "ppl_windows": 32, "kld_windows": 4,
                "calib": ["--calib", "16", "--calib-seqlen", "2048"]},
    "stories260k": {"path": os.path.join(SHARED, "models/stories260K/stories260K.bin"), "label": "stories260K",
                    "seqlen": 512, "ppl_windows": 64, "kld_windows": 64,
                    "calib": ["--calib", "128", "--calib-seqlen", "512"]},
}
import subprocess
import sys
import time


def run(cmd, log):
    """Runs one step, appending its output to `log`; exits naming the log when the step fails."""
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}), see {log}: {' '.join(cmd)}")
    return time.time() - t0


def load(path):
    with open(path) as f:
        return json.load(f)


def write_section(path, begin, end, lines):
    """Replaces the part of `path` between the markers `begin` and `end` (included in `lines`), or
    appends `lines` when the markers are not there: each script owns its section of a shared file."""
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + "\n".join(lines) + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)


def pyplot():
    """matplotlib's pyplot with the Agg backend, or None (Debian's python3-matplotlib is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib not available: no plot (use /usr/bin/python3 with python3-matplotlib)")
        return None
