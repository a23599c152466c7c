#!/usr/bin/env python3
"""Interleaved side-by-side timing: runs the reference script and `rectok bench` alternately
(this machine's timings drift 20-40 % over minutes, so only interleaved medians are comparable)
and prints the median seconds per image of each and their ratio.

    python3 benches/compare.py tokenizer --rectok-repo ../RecTok --rounds 4
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

p = argparse.ArgumentParser()
p.add_argument("what", choices=["tokenizer", "dit"])
p.add_argument("--rectok-repo", required=True)
p.add_argument("--rounds", type=int, default=4)
p.add_argument("--iters", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--python", default=sys.executable)
p.add_argument("--binary", default="target/release/rectok")
a = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
runs = {"reference": [], "rectok": []}
with tempfile.TemporaryDirectory() as d:
    for r in range(a.rounds):
        ref, ours = os.path.join(d, f"ref{r}.json"), os.path.join(d, f"ours{r}.json")
        subprocess.run([a.python, os.path.join(here, f"reference_{a.what}.py"), "--rectok-repo", a.rectok_repo,
                        "--threads", str(a.threads), "--iters", str(a.iters), "-o", ref], check=True, capture_output=True)
        subprocess.run([a.binary, "-q", "bench", a.what, "--iters", str(a.iters), "--threads", str(a.threads), "--json", ours],
                       check=True, capture_output=True)
        runs["reference"].append(json.load(open(ref))); runs["rectok"].append(json.load(open(ours)))
unit = "s/image" if a.what == "tokenizer" else "s/forward"
print(f"{'op':8} {'batch':>5} {'reference ' + unit:>19} {'rectok ' + unit:>16} {'ratio':>7}   ({a.rounds} interleaved rounds, medians)")
ops = ["encode", "decode"] if a.what == "tokenizer" else [k for k in runs["rectok"][0] if k != "threads"]
for op in ops:
    for b in runs["rectok"][0][op]:
        ref = statistics.median(x[op][b] for x in runs["reference"])
        ours = statistics.median(x[op][b] for x in runs["rectok"])
        print(f"{op:8} {b:>5} {ref:>19.4f} {ours:>16.4f} {ref / ours:>6.2f}x")
