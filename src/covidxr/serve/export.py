"""Export a run's network (backbone + head, normalised batch in, logits out) to ONNX or TorchScript, and check
it against PyTorch on real images of the run's data before calling the export done; optionally quantise the
ONNX model to INT8 behind an accuracy gate (serve.quantize)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidxr.atomic import write_json
from covidxr.data.readers import read_image
from covidxr.device import current
from covidxr.errors import CovidxrError
from covidxr.extras import require
from covidxr.models.tta import scoring_net
from covidxr.run import Run
from covidxr.rundir import RunDir
from covidxr.serve.engine import INT8_FILE, ONNX_FILE

TORCHSCRIPT_FILE = RunDir.torchscript
LUNGS_ONNX_FILE = "lungs.onnx"  # inside the run's lung model folder (RunDir.lungs)
PARITY_TOLERANCE = 1e-4
FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8",)


def sample_films(run: Run | Path, n: int = 8) -> list[np.ndarray]:
    """A few real films of the run's own data, decoded."""
    manifest = Run.open(run).listed
    records = manifest.records[:: max(1, len(manifest.records) // n)][:n]
    return [read_image(manifest.abspath(r)).pixels for r in records]


def sample_batch(run: Run | Path, n: int = 8) -> np.ndarray:
    """A few real images of the run's own data, preprocessed exactly as for inference."""
    run = Run.open(run)
    return torch.stack([run.spec.preprocess(film) for film in sample_films(run, n)]).numpy()


def export_lungs(run_dir: Path) -> dict[str, Any]:
    """The run's lung model as ONNX beside it (film at the segmenter's size in, lung logits out), parity-checked:
    a deployment outside covidxr cuts films to their lungs as the classifier was trained."""
    from covidxr.lungs import load_lung_model
    from covidxr.lungs.segmenter import to_input
    from covidxr.serve.engine import onnx_session

    model = load_lung_model(run_dir / RunDir.lungs)
    x = torch.stack([to_input(film, model.spec) for film in sample_films(run_dir, 4)])
    place = current().stage("export-parity")
    reference = place.forward(place.module(model.net), x).numpy()
    path = export_onnx(model.net.cpu(), x, run_dir / RunDir.lungs / LUNGS_ONNX_FILE)
    diff = float(np.abs(onnx_session(path).run(None, {"image": x.numpy()})[0] - reference).max())
    if diff > PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise CovidxrError(f"exported lung model differs from PyTorch by {diff:.2e} > {PARITY_TOLERANCE}: not kept")
    return {"path": str(path), "max_abs_diff": diff, "input_size": model.spec.input_size, "sha256": model.sha256}


class Calibrated(torch.nn.Module):
    """The network with its validation-fitted temperature built in: exported logits need no model.json."""

    def __init__(self, net: torch.nn.Module, temperature: float) -> None:
        super().__init__()
        self.net, self.temperature = net, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Normalised batch in ("image"), logits out ("logits"), dynamic batch size."""
    require("export", "onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter; callers check parity
        torch.onnx.export(
            net.eval(), (example,), str(path), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    return path


def export_run(run: Run | Path | str, fmt: str = "onnx", quantize: str | None = None) -> dict[str, Any]:
    """Export, check parity, and with `quantize="int8"` add the gated INT8 model (refused with its numbers)."""
    run = Run.open(run)
    run_dir = run.root
    if fmt not in FORMATS:
        raise CovidxrError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZATIONS or fmt != "onnx"):
        raise CovidxrError(f"--quantize {quantize}: only int8, and only with --format onnx")
    trained, spec = run.net, run.spec
    net = Calibrated(scoring_net(trained, spec), spec.temperature).eval()  # temperature (and TTA) built in
    batch = sample_batch(run)
    x = torch.from_numpy(batch)
    place = current().stage("export-parity")  # the reference on the run's device; the export itself from the CPU
    reference = place.forward(place.module(net), x).numpy()
    net = net.cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (tracer, deprecations); parity below is what counts
        if fmt == "onnx":
            (run_dir / INT8_FILE).unlink(missing_ok=True)  # it was quantised from the export being replaced
            path = export_onnx(net, x, run_dir / ONNX_FILE)
            from covidxr.serve.engine import OnnxEngine

            exported = OnnxEngine(run_dir, int8=False).logits(batch)
        else:
            path = run_dir / TORCHSCRIPT_FILE
            torch.jit.trace(net, x).save(str(path))
            with torch.no_grad():
                exported = torch.jit.load(str(path)).eval()(x).numpy()  # our own file, just written
    diff = float(np.abs(exported - reference).max())
    result = {
        "format": fmt,
        "path": str(path),
        "images": len(batch),
        "max_abs_diff": diff,
        "input_size": spec.input_size,
        "temperature": spec.temperature,
    }
    if diff > PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise CovidxrError(f"exported {fmt} model differs from PyTorch by {diff:.2e} > {PARITY_TOLERANCE}: not kept")
    if fmt == "onnx" and spec.lungs != "none":
        result["lungs"] = export_lungs(run_dir)
    record = RunDir(run_dir).export_record(fmt)
    write_json(record, result)
    if quantize == "int8":
        from covidxr.serve.quantize import quantize_int8

        result["int8"] = quantize_int8(run).to_json()  # refused: raises with the numbers, fp32 kept
        write_json(record, result)
    return result
