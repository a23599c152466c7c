#!/usr/bin/env python3
"""Time one training step of the reference PyTorch models, for `rectok bench train --reference OUT.json`.

The steps are the ones `rectok bench train` times for `rectok-b` and `ditdh-s` (random weights):

* rectok_b: the reference's `RecTok` (rectok_BB, 128 channels, mask ratio fixed at 0.2571, the
  mean of the released tokenizer's max(0, U(−0.1, 0.6)), on both sides: a draw per step made
  each side time different token counts, 103 to 256 per image in the encoder), flow noise
  with the dimension-shifted schedule, γ = 1), `model(x)` in training mode, loss =
  MSE(decoded, x) + 1e-6 · KL, backward, gradient clipping at 3.0, AdamW (β = 0.9, 0.95,
  weight decay 1e-4) and the EMA update (0.999) — stage 1 without teacher, perceptual and GAN
  losses, as `configs/rectok-b-stage1.toml` with `teacher.spec=none loss.perceptual=none`.
* ditdh_s: the reference's `DiTwDDTHead` S (`model(x, y)`: its transport's training loss with
  label dropout), backward, clipping at 1.0, AdamW (β = 0.9, 0.95, no weight decay) and
  `SimpleEMAModel.step` (0.9995), as `configs/ditdh-s.toml`.

Only models/rectok.py, models/DDT.py and what they import are loaded from the checkout
(`bench_device.use_reference_models`).

    python3 benches/reference_train.py --rectok-repo ../RecTok --threads 2 --batch-sizes 1,4 -o ref.json
"""
import argparse, json, os, resource, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_device  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--rectok-repo", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--recipes", default="rectok-b,ditdh-s")
p.add_argument("--batch-sizes", default="1,4")
p.add_argument("--iters", type=int, default=3)
bench_device.add_arguments(p)
p.add_argument("-o", "--output", required=True)
a = p.parse_args()

bench_device.use_reference_models(a.rectok_repo)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev, autocast, sync = bench_device.setup(a)
# Mixed precision trains with f32 master weights: the forward and backward run under autocast.
scaler = torch.amp.GradScaler(enabled=a.precision == "f16" and a.device == "cuda")


# E[max(0, U(−0.1, 0.6))] = 0.6² / (2 · 0.7); `rectok bench train` fixes the same ratio.
MEAN_MASK_RATIO = 0.2571


def ema_of(model):
    return {n: q.detach().clone() for n, q in model.named_parameters() if q.requires_grad}


@torch.no_grad()
def ema_step(ema, model, decay):
    for n, q in model.named_parameters():
        if q.requires_grad:
            ema[n].mul_(decay).add_(q, alpha=1 - decay)


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_mb():
    """VmHWM (Linux), reset by `reset_peak` (as `rectok bench train` measures its own)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def timed(step):
    """(median seconds, minor page faults per timed step, peak RSS MB from the warm-up on)."""
    reset_peak()
    step()
    sync()
    faults = minor_faults()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t)
    return statistics.median(times), (minor_faults() - faults) / a.iters, peak_rss_mb()


def train_step(model, opt, loss_fn, clip, ema, decay):
    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        ema_step(ema, model, decay)
    return step


out = {"torch": torch.__version__, "threads": a.threads, "device": a.device, "precision": a.precision,
       "memory": {}}
for recipe in a.recipes.split(","):
    if recipe == "rectok-b":
        from models.rectok import rectok_BB  # noqa: E402
        model = rectok_BB(token_channels=128, img_size=256, patch_size=16, mask_ratio=MEAN_MASK_RATIO,
                          mask_ratio_type="fix", noise_schedule="shift", gamma=1.0).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
        key, clip, decay = "rectok_b", 3.0, 0.999

        def loss_fn():
            decoded, d = model(x)
            return F.mse_loss(decoded, x) + 1e-6 * d["posteriors"].kl().mean()
    elif recipe == "ditdh-s":
        from models.DDT import DiTwDDTHead  # noqa: E402
        model = DiTwDDTHead(img_size=256, patch_size=1, tokenizer_patch_size=16, token_channels=128,
                            hidden_size=[384, 2048], depth=[12, 2], num_heads=[6, 16]).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)
        key, clip, decay = "ditdh_s", 1.0, 0.9995

        def loss_fn():
            return model(x, y)
    else:
        sys.exit(f"unknown recipe {recipe!r} (rectok-b, ditdh-s)")
    ema = ema_of(model)
    out[key], out["memory"][key] = {}, {}
    for b in [int(s) for s in a.batch_sizes.split(",")]:
        if key == "rectok_b":
            x = torch.rand(b, 3, 256, 256, device=dev) * 2 - 1
        else:
            x, y = torch.randn(b, 128, 16, 16, device=dev), torch.randint(0, 1000, (b,), device=dev)
        seconds, faults, peak = timed(train_step(model, opt, loss_fn, clip, ema, decay))
        out[key][str(b)] = seconds
        out["memory"][key][str(b)] = {"faults_per_step": faults, "peak_rss_mb": peak}
        print(f"{key} batch {b}: {seconds:.3f} s per step, {faults:.0f} page faults per step, peak RSS {peak} MB",
              flush=True)
    del model, opt, ema
json.dump(out, open(a.output, "w"), indent=1)
