#!/usr/bin/env python3
"""Interleaved side-by-side timing: runs the reference script and `rectok bench` alternately
(this machine's timings drift 20-40 % over minutes, so only interleaved medians are comparable)
and prints the median seconds of each and their ratio (tokenizer: per image; dit: per forward;
train: per training step, `benches/reference_train.py` against `rectok bench train`).

    python3 benches/compare.py tokenizer --rectok-repo ../RecTok --rounds 4
    python3 benches/compare.py train --rectok-repo ../RecTok --rounds 3 --batch-sizes 1,4
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

p = argparse.ArgumentParser()
p.add_argument("what", choices=["tokenizer", "dit", "train"])
p.add_argument("--rectok-repo", required=True)
p.add_argument("--rounds", type=int, default=4)
p.add_argument("--iters", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--python", default=sys.executable)
p.add_argument("--binary", default="target/release/rectok")
p.add_argument("--batch-sizes", help="batch sizes (default: each script's own; train: 1,4)")
p.add_argument("--recipes", default="rectok-b,ditdh-s", help="train: the steps to time (rectok-b, ditdh-s)")
a = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
runs = {"reference": [], "rectok": []}
with tempfile.TemporaryDirectory() as d:
    for r in range(a.rounds):
        ref, ours = os.path.join(d, f"ref{r}.json"), os.path.join(d, f"ours{r}.json")
        batches = a.batch_sizes or ("1,4" if a.what == "train" else None)
        extra = (["--batch-sizes", batches] if batches else []) + (["--recipes", a.recipes] if a.what == "train" else [])
        for command in ([a.python, os.path.join(here, f"reference_{a.what}.py"), "--rectok-repo", a.rectok_repo,
                         "--threads", str(a.threads), "--iters", str(a.iters), "-o", ref] + extra,
                        [a.binary, "-q", "bench", a.what, "--iters", str(a.iters), "--threads", str(a.threads),
                         "--json", ours] + extra):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{' '.join(command[:3])} failed (exit {done.returncode}):\n{done.stderr.strip()}")
        runs["reference"].append(json.load(open(ref))); runs["rectok"].append(json.load(open(ours)))
unit = {"tokenizer": "s/image", "dit": "s/forward", "train": "s/step"}[a.what]
print(f"{'op':8} {'batch':>5} {'reference ' + unit:>19} {'rectok ' + unit:>16} {'ratio':>7}   ({a.rounds} interleaved rounds, medians)")
ops = [k for k, v in runs["rectok"][0].items() if isinstance(v, dict) and k in runs["reference"][0] and k != "memory"]
for op in ops:
    for b in runs["rectok"][0][op]:
        ref = statistics.median(x[op][b] for x in runs["reference"])
        ours = statistics.median(x[op][b] for x in runs["rectok"])
        print(f"{op:8} {b:>5} {ref:>19.4f} {ours:>16.4f} {ref / ours:>6.2f}x")
if a.what == "train" and all("memory" in r for rs in runs.values() for r in rs):
    print(f"\n{'op':8} {'batch':>5} {'reference faults/step':>22} {'rectok faults/step':>19} "
          f"{'reference peak RSS MB':>22} {'rectok peak RSS MB':>19}   (medians)")
    for op in ops:
        for b in runs["rectok"][0][op]:
            med = lambda side, f: statistics.median(x["memory"][op][b][f] for x in runs[side])
            print(f"{op:8} {b:>5} {med('reference', 'faults_per_step'):>22.0f} {med('rectok', 'faults_per_step'):>19.0f} "
                  f"{med('reference', 'peak_rss_mb'):>22.0f} {med('rectok', 'peak_rss_mb'):>19.0f}")
