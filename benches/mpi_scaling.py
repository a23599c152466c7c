#!/usr/bin/env python3
"""Multi-process scaling of rectok training on one machine (docs/DISTRIBUTED.md).

Times the training step of the same global batch three ways, interleaved round by round:

* ``1 proc x 1 thread``   one process, one CPU thread, one replica;
* ``1 proc x 2 threads``  one process, two threads, two data-parallel replicas (threads);
* ``2 procs x 1 thread``  ``mpirun -np 2``, one thread each (MPI all-reduce of the gradients);

and prints the median seconds per step of each (steps after the first, from the runs'
``metrics.jsonl``) with the speed-up over one thread. Standard library only; needs a rectok
built with ``--features mpi`` and Open MPI's ``mpirun``.

    python3 benches/mpi_scaling.py [--rectok target/release/rectok] [--rounds 3] [--rectok-b]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

WORKLOADS = {
    "tiny tokenizer, batch 16": [
        "train", "tokenizer", "--config", "tiny",
        "--set", 'data.source="procedural:512"', "--set", "optim.batch_size=16",
        "--set", "run.max_steps=12", "--set", "teacher.resolution=32",
    ],
    "ditdh-tiny generator, batch 32": [
        "train", "generator", "--config", "ditdh-tiny",
        "--set", 'data.source="procedural:1024"', "--set", "optim.batch_size=32",
        "--set", "optim.accum_steps=1", "--set", "run.max_steps=20", "--set", "run.fd_images=0",
    ],
}

RECTOK_B = {
    "rectok_b stage 1, batch 4 (EfficientNet teacher)": [
        "train", "tokenizer", "--config", "rectok-b-stage1",
        "--set", 'data.source="procedural:64"', "--set", "optim.batch_size=4",
        "--set", "optim.accum_steps=1", "--set", "run.max_steps=3",
        "--set", 'teacher.spec="efficientnet-lite0"',
    ],
}

MODES = {
    "1 proc x 1 thread": (1, ["--set", "run.threads=1", "--set", "run.data_parallel=1"]),
    "1 proc x 2 threads": (1, ["--set", "run.threads=2", "--set", "run.data_parallel=2"]),
    "2 procs x 1 thread": (2, ["--set", "run.threads=1", "--set", "run.data_parallel=1"]),
}


def seconds_per_step(run_dir):
    """Median step time after the first step, from the cumulative `elapsed_s` of each record."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    elapsed = [r["elapsed_s"] for r in records]
    steps = [r["step"] for r in records]
    per = [(b - a) / (sb - sa) for a, b, sa, sb in zip(elapsed, elapsed[1:], steps, steps[1:])]
    return statistics.median(per)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rectok", default="target/release/rectok")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rectok-b", action="store_true", help="also rectok_b's stage-1 step (slow)")
    a = p.parse_args()
    workloads = dict(WORKLOADS)
    if a.rectok_b:
        workloads.update(RECTOK_B)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", RUST_LOG="warn")
    with tempfile.TemporaryDirectory() as tmp:
        # The generator workloads train on a tokenizer: a tiny one, trained once.
        tokenizer_run = os.path.join(tmp, "tokenizer")
        subprocess.run([a.rectok, "-q", *WORKLOADS["tiny tokenizer, batch 16"], "--out", tokenizer_run,
                        "--set", "run.max_steps=2"], check=True, env=env)
        tokenizer = os.path.join(tokenizer_run, "tokenizer.safetensors")
        times = {(w, m): [] for w in workloads for m in MODES}
        for r in range(a.rounds):
            for w, args in workloads.items():
                for m, (np, extra) in MODES.items():
                    out = os.path.join(tmp, f"{len(os.listdir(tmp))}")
                    cmd = [a.rectok, "-q", *args, "--out", out, "--set", "run.log_every=1",
                           "--set", "run.sample_every=0", *extra]
                    if args[1] == "generator":
                        cmd += ["--tokenizer", tokenizer]
                    if np > 1:
                        cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np), *cmd]
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                    times[(w, m)].append(seconds_per_step(out))
                    print(f"round {r + 1}: {w}, {m}: {times[(w, m)][-1]:.3f} s/step", file=sys.stderr)
        print(f"| workload | {' | '.join(MODES)} |")
        print(f"|---|{'---|' * len(MODES)}")
        for w in workloads:
            base = statistics.median(times[(w, "1 proc x 1 thread")])
            cells = []
            for m in MODES:
                t = statistics.median(times[(w, m)])
                cells.append(f"{t:.3f} s ({base / t:.2f}x)")
            print(f"| {w} | {' | '.join(cells)} |")
        print(f"\nmedians of {a.rounds} interleaved rounds; speed-up over one process with one thread")


if __name__ == "__main__":
    main()
