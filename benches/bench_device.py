"""What benches/reference_*.py share: `--device cpu|cuda` and `--precision f32|f16|bf16`
(autocast of the forward, as `rectok --precision`), and importing the reference's model files
alone from a checkout of the official code."""
import importlib.util
import os
import sys
import types


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


def use_reference_models(repo):
    """Makes `from models.rectok import ...` and `from models.DDT import ...` load those files
    (and what they import) from the checkout `repo` — not `models/__init__.py`, which imports
    every model of the repository and with them diffusers, open_clip and more.

    `models` becomes a package whose `__init__` is not run; `utils.foundation_models` (the
    teacher loader, unused without a teacher, and itself `import models`) is a stub; `timm` and
    `transformers` are the installed ones, or stubs where they are not installed.
    """
    repo = os.path.abspath(repo)
    sys.path.insert(0, repo)
    for name in ["models", "utils"]:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(repo, name)]
        sys.modules[name] = package
    foundation = types.ModuleType("utils.foundation_models")
    foundation.create_foundation_model = None
    sys.modules["utils.foundation_models"] = foundation
    for name in ["timm", "transformers"]:
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    transformers = sys.modules.get("transformers")
    if transformers is not None and not hasattr(transformers, "AutoModel"):
        transformers.AutoImageProcessor = transformers.AutoModel = None
