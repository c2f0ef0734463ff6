"""`covidxr weights` and the torchxrayvision backbones, with no network: architecture-faithful random weights
written exactly as each source publishes them (a timm/torchvision state dict; a whole torchxrayvision model saved
with `torch.save`; torchxrayvision's ResNet50 state file), imported once, then trained, explained, exported and
served through the CLI as a user on an offline machine would."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

from covidxr.errors import CovidxrError
from covidxr.explain.job import filters_report
from covidxr.models.factory import create_backbone
from covidxr.models.registry import BACKBONES, get_backbone
from covidxr.models.weight_cache import cached_weights, fetch_weights, import_weights, weight_table
from covidxr.models.weights import apply_weights, check_weights
from tests.servers import serve
from tests.test_cli import covidxr

xrv = pytest.importorskip("torchxrayvision", reason="the xrv extra is part of [all]; CI installs it")
DENSENET = "xrv-densenet121-res224-all"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weight cache of this test's own (the subprocesses inherit it)."""
    monkeypatch.setenv("COVIDXR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def listed(name: str) -> dict[str, str]:
    """The backbone's row of `covidxr weights list --json` (in process: the CLI prints these rows)."""
    return next(asdict(r) for r in weight_table() if r.backbone == name)


def xrv_densenet_file(path: Path) -> torch.nn.Module:
    """A whole torchxrayvision DenseNet pickled with torch.save, as its release page publishes them."""
    torch.manual_seed(3)
    model = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init any run would draw
    torch.save(model, path)
    return model


@pytest.mark.slow
def test_a_timm_imagenet_file_imported_once_then_trains_exports_and_serves_offline(phantoms: Path, cache: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    import timm

    torch.manual_seed(5)
    published = timm.create_model("resnet50", pretrained=False).state_dict()  # with its ImageNet classifier
    torch.save(published, tmp_path / "resnet50_a1_0-14fe96d1.pth")
    assert listed("resnet50")["cached"] == "no"
    with pytest.raises(CovidxrError, match=r"no ImageNet weights for resnet50.*covidxr weights import resnet50 FILE"):
        check_weights(get_backbone("resnet50"), "imagenet")

    done = covidxr("weights", "import", "resnet50", str(tmp_path / "resnet50_a1_0-14fe96d1.pth"))
    assert done.returncode == 0, done.stderr
    entry = cached_weights(get_backbone("resnet50"), "imagenet")
    assert entry is not None and entry.origin == "file:resnet50_a1_0-14fe96d1.pth"
    assert listed("resnet50")["cached"].startswith(entry.sha256[:12])
    assert "fc.weight" not in load_file(str(entry.file))  # the classifier is not part of the feature extractor

    run = tmp_path / "run"
    job = covidxr("run", "--data", str(phantoms), "--out", str(run), "--backbone", "resnet50", "--weights",
                  "imagenet", "--input-size", "64", "--epochs", "2")  # fmt: skip
    assert job.returncode == 0, job.stderr
    spec = json.loads((run / "model.json").read_text())
    assert spec["weights_sha256"] == entry.sha256 and spec["weights"].startswith("imagenet:cache:file:")
    weights = load_file(str(run / "best.safetensors"))
    assert torch.equal(weights["backbone.conv1.weight"], published["conv1.weight"])  # frozen: the imported file
    assert (run / "metrics.json").is_file() and (run / "explain.json").is_file()
    exported = covidxr("export", str(run))
    assert exported.returncode == 0 and "max |diff|" in exported.stdout, exported.stderr
    film = sorted((phantoms / "images" / "COVID-19").glob("*.png"))[0]
    proc, url = serve(run, "--engine", "onnx")
    try:
        assert httpx.get(f"{url}/v1/model", timeout=30).json()["weights_sha256"] == entry.sha256
        answer = httpx.post(f"{url}/v1/predict", files={"file": (film.name, film.read_bytes())}, timeout=120)
        assert answer.status_code == 200 and 0 <= answer.json()["probabilities"]["COVID-19"] <= 1, answer.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_pickled_xrv_densenet_needs_trust_pickle_then_trains_explains_exports_and_serves(
    phantoms: Path, cache: Path, tmp_path: Path
) -> None:
    model = xrv_densenet_file(tmp_path / "nih-pc-chex-densenet121-best.pt")
    refused = covidxr("weights", "import", DENSENET, str(tmp_path / "nih-pc-chex-densenet121-best.pt"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "nih-pc-chex-densenet121-best.pt" in refused.stderr and "--trust-pickle" in refused.stderr
    assert listed(DENSENET)["cached"] == "no"  # nothing unpickled, nothing cached

    done = covidxr("weights", "import", DENSENET, str(tmp_path / "nih-pc-chex-densenet121-best.pt"), "--trust-pickle")
    assert done.returncode == 0, done.stderr
    entry = cached_weights(get_backbone(DENSENET), "xrv")
    assert entry is not None and listed(DENSENET)["cached"].startswith(entry.sha256[:12])

    run = tmp_path / "run"
    job = covidxr("run", "--data", str(phantoms), "--out", str(run), "--backbone", DENSENET, "--weights", "xrv",
                  "--input-size", "64", "--epochs", "2")  # fmt: skip
    assert job.returncode == 0, job.stderr
    spec = json.loads((run / "model.json").read_text())
    assert spec["channels"] == 1 and spec["weights_sha256"] == entry.sha256
    lo = (0 - spec["mean"][0]) / spec["std"][0]
    hi = (1 - spec["mean"][0]) / spec["std"][0]
    assert (lo, hi) == (-1024, 1024)  # torchxrayvision's scaling, carried in model.json
    weights = load_file(str(run / "best.safetensors"))
    assert torch.equal(weights["backbone.net.features.conv0.weight"], model.features.conv0.weight)

    explained = json.loads((run / "explain.json").read_text())
    assert explained["cam"].endswith("at net.features.norm5")  # the CAM layer the registry names
    assert filters_report(run).first_layer[1] == 1  # one-channel first-layer kernels, drawn in grey

    exported = covidxr("export", str(run))
    assert exported.returncode == 0, exported.stderr
    graph_input = onnx.load(str(run / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in graph_input[1:]] == [1, 64, 64]  # one channel, as the network takes it

    films = sorted((phantoms / "images" / "COVID-19").glob("*.png"))[:3]
    predicted = covidxr("predict", str(run), *map(str, films), "--out", str(tmp_path / "p.csv"), "--engine", "onnx")
    assert predicted.returncode == 0, predicted.stderr
    with (tmp_path / "p.csv").open() as fh:
        scores = {Path(r["path"]).name: float(r["score_COVID-19"]) for r in csv.DictReader(fh)}
    proc, url = serve(run, "--engine", "onnx")
    try:
        about = httpx.get(f"{url}/v1/model", timeout=30).json()
        assert about["channels"] == 1 and about["weights_sha256"] == entry.sha256
        for film in films:
            answer = httpx.post(f"{url}/v1/predict", files={"file": (film.name, film.read_bytes())}, timeout=120)
            assert answer.status_code == 200, answer.text
            assert answer.json()["probabilities"]["COVID-19"] == pytest.approx(scores[film.name], abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_xrv_backbones_compute_what_torchxrayvision_computes(cache: Path, tmp_path: Path) -> None:
    """Same weights, same input: our DenseNet's pooled output is torchxrayvision's `features2`, and the ResNet50
    state file (published as a state dict: no pickle trust needed) loads key for key into torchvision's resnet50
    with torchxrayvision's one-channel stem."""
    import torchvision

    x = torch.rand(2, 1, 64, 64) * 2048 - 1024
    model = xrv_densenet_file(tmp_path / "d.pt").eval()
    import_weights(DENSENET, tmp_path / "d.pt", trust_pickle=True)
    ours = create_backbone(get_backbone(DENSENET)).eval()
    apply_weights(ours, get_backbone(DENSENET), "xrv")
    with torch.no_grad():
        assert torch.allclose(ours(x), model.features2(x), atol=1e-5)

    torch.manual_seed(4)
    resnet = torchvision.models.resnet50(num_classes=18, weights=None)
    resnet.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.save(resnet.state_dict(), tmp_path / "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt")
    import_weights("xrv-resnet50-res512-all", tmp_path / "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt")
    ours = create_backbone(get_backbone("xrv-resnet50-res512-all")).eval()
    apply_weights(ours, get_backbone("xrv-resnet50-res512-all"), "xrv")
    resnet.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(ours(x), resnet.eval()(x), atol=1e-4)


@pytest.mark.parametrize("name", [DENSENET, "xrv-resnet50-res512-all"])
def test_last_k_cuts_the_xrv_backbones_into_a_cached_trunk_and_a_trainable_tail(name: str) -> None:
    from covidxr.models.factory import frozen_parameter_names
    from covidxr.models.trunk import split_trunk

    backbone = create_backbone(get_backbone(name))
    cut = split_trunk(backbone, 1, 64, channels=1)
    assert cut is not None  # tail(trunk(x)) reproduced the whole backbone
    _, tail = cut
    frozen = set(frozen_parameter_names(backbone, 1))
    tail_params = {id(p) for p in tail.parameters()}
    assert frozen and all(id(backbone.get_parameter(n)) not in tail_params for n in frozen)
    assert len(frozen) + sum(1 for _ in tail.parameters()) == sum(1 for _ in backbone.parameters())


def test_files_that_do_not_fit_and_wrong_tags_are_one_clear_error(cache: Path, tmp_path: Path) -> None:
    import timm

    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), tmp_path / "resnet50.pth")
    bad = covidxr("weights", "import", DENSENET, str(tmp_path / "resnet50.pth"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "resnet50.pth" in bad.stderr and "do not fit" in bad.stderr and "missing" in bad.stderr
    (tmp_path / "cut.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CovidxrError, match=r"cut.safetensors: cannot read weights"):
        import_weights("resnet50", tmp_path / "cut.safetensors")
    with pytest.raises(CovidxrError, match=r"missing.pth: weights file not found"):
        import_weights("resnet50", tmp_path / "missing.pth", trust_pickle=True)
    assert listed("resnet50")["cached"] == "no" and listed(DENSENET)["cached"] == "no"

    with pytest.raises(CovidxrError, match="published weights are --weights xrv, not imagenet"):
        check_weights(get_backbone(DENSENET), "imagenet")
    with pytest.raises(CovidxrError, match="published weights are --weights imagenet, not xrv"):
        check_weights(get_backbone("resnet50"), "xrv")
    with pytest.raises(CovidxrError, match=r"no torchxrayvision weights for .*covidxr weights import"):
        check_weights(get_backbone(DENSENET), "xrv")
    with pytest.raises(CovidxrError, match=r"cannot be reached.*weights import"):  # HF_HUB_OFFLINE: no network
        fetch_weights("resnet50")


def test_weights_list_names_every_backbone_and_the_bundled_lite_weights(cache: Path) -> None:
    shown = covidxr("weights", "list")
    assert shown.returncode == 0 and f"cache: {cache / 'weights'}" in shown.stdout
    rows = {r["backbone"]: r for r in json.loads(covidxr("weights", "list", "--json").stdout)}
    assert set(rows) == set(BACKBONES)
    assert rows["tf_efficientnet_lite0"]["bundled"] == "yes" and rows["resnet50"]["bundled"] == "-"
    assert rows["resnet50"]["hub"] == "offline" and rows["simple_cnn"]["weights"] == "none"
    assert rows[DENSENET]["input"] == "224 px, 1 ch, [-1024, 1024]"
    assert rows["xrv-resnet50-res512-all"]["input"].startswith("512 px, 1 ch")
    assert np.isclose(float(rows["resnet50"]["input"].split("mean ")[1].split("/")[0]), 0.485)
