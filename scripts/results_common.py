"""Helpers shared by the results scripts (quant_results.py, zero_shot_results.py)."""
import json
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
