#!/usr/bin/env python3
"""Time one forward pass (one sampling step) of the reference PyTorch DiT^DH-S / DiT^DH-XL on
128×16×16 latents with random weights (fp32), for `rectok bench dit --reference OUT.json`.

--rectok-repo is a checkout of https://github.com/Shi-qingyu/RecTok; only models/DDT.py,
models/layers.py and transport/ are imported (not models/__init__.py, which pulls in every model
and diffusers); it is not part of this repository.

    python3 benches/reference_dit.py --rectok-repo ../RecTok --threads 2 -o ref_dit.json
"""
import argparse, json, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--rectok-repo", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--models", default="s,xl")
p.add_argument("--batch-sizes", default="1,8")
p.add_argument("--iters", type=int, default=3)
bench_device.add_arguments(p)
p.add_argument("-o", "--output", required=True)
a = p.parse_args()
bench_device.use_reference_models(a.rectok_repo)
import torch  # noqa: E402
from models.DDT import DiTwDDTHead  # noqa: E402

torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev, autocast, sync = bench_device.setup(a)
sizes = {"s": ([384, 2048], [12, 2], [6, 16]), "b": ([768, 2048], [12, 2], [12, 16]),
         "l": ([1024, 2048], [24, 2], [16, 16]), "xl": ([1152, 2048], [28, 2], [16, 16])}
out = {"torch": torch.__version__, "threads": a.threads, "device": a.device, "precision": a.precision}
with torch.inference_mode(), autocast:
    for name in a.models.split(","):
        hidden, depth, heads = sizes[name]
        model = DiTwDDTHead(img_size=256, patch_size=1, tokenizer_patch_size=16, token_channels=128,
                            hidden_size=hidden, depth=depth, num_heads=heads).eval().to(dev)
        for prm in model.parameters():
            prm.normal_(0, 0.02)
        out[name] = {}
        for b in [int(x) for x in a.batch_sizes.split(",")]:
            x, t, y = torch.randn(b, 128, 16, 16, device=dev), torch.rand(b, device=dev), torch.arange(b, device=dev)
            model.net(x, t, y)
            sync()
            times = []
            for _ in range(a.iters):
                s = time.perf_counter(); model.net(x, t, y); sync(); times.append(time.perf_counter() - s)
            out[name][str(b)] = statistics.median(times)
            print(f"{name} batch {b}: {out[name][str(b)]:.3f} s per forward", flush=True)
        del model
json.dump(out, open(a.output, "w"), indent=1)
