#!/usr/bin/env python3
"""Time the reference PyTorch RecTok tokenizer (encode / decode of rectok_BB at 256 px, random
weights, fp32) on this machine, for `rectok bench tokenizer --reference OUT.json`.

The official code is not part of this repository: point --rectok-repo at a checkout of
https://github.com/Shi-qingyu/RecTok: only models/rectok.py and what it imports are loaded (not
models/__init__.py), and the teacher loader is stubbed because no teacher is built; a plain
install of the reference's requirements (or just torch, einops and numpy) is enough.

    python3 benches/reference_tokenizer.py --rectok-repo ../RecTok --threads 2 -o ref.json
"""
import argparse, json, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--rectok-repo", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch-sizes", default="1,8")
p.add_argument("--iters", type=int, default=5)
bench_device.add_arguments(p)
p.add_argument("-o", "--output", required=True)
a = p.parse_args()

bench_device.use_reference_models(a.rectok_repo)
import torch  # noqa: E402
from models.rectok import rectok_BB  # noqa: E402

torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev, autocast, sync = bench_device.setup(a)
model = rectok_BB(token_channels=128, img_size=256, patch_size=16, mask_ratio=0.0).eval().to(dev)
out = {"encode": {}, "decode": {}, "torch": torch.__version__, "threads": a.threads, "device": a.device,
       "precision": a.precision}
with torch.inference_mode(), autocast:
    for b in [int(x) for x in a.batch_sizes.split(",")]:
        x = torch.rand(b, 3, 256, 256, device=dev) * 2 - 1
        z = torch.randn(b, 256, 128, device=dev)
        for op, f in [("encode", lambda: model.encoder(x)["z"]), ("decode", lambda: model.decoder(z))]:
            f()
            sync()
            times = []
            for _ in range(a.iters):
                t = time.perf_counter(); f(); sync(); times.append(time.perf_counter() - t)
            out[op][str(b)] = statistics.median(times) / b
            print(f"{op} batch {b}: {out[op][str(b)]:.4f} s/image", flush=True)
json.dump(out, open(a.output, "w"), indent=1)
