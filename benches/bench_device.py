"""Device and precision options shared by benches/reference_*.py: `--device cpu|cuda` and
`--precision f32|f16|bf16` (autocast of the forward, as `rectok --precision`)."""


def add_arguments(parser):
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="f32", choices=["f32", "f16", "bf16"],
                        help="autocast dtype of the forward (as `rectok --precision`)")


def setup(args):
    """(device, autocast context, sync function) for the parsed `args`."""
    import torch
    dev = torch.device(args.device)
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
    autocast = torch.autocast(dev.type, dtype=dtype, enabled=args.precision != "f32")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return dev, autocast, sync
