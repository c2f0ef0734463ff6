"""One placement for every stage: names checked before any work, and every stage that runs a network asks it
(recorded per stage), here on the CPU; the same stages run on a GPU in benchmarks/bench_gpu.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covidxr import device
from covidxr.errors import CovidxrError


@pytest.mark.parametrize(
    ("accelerator", "precision", "message"),
    [
        ("tpu", "32-true", "unknown --accelerator 'tpu'; choose one of auto, cpu, gpu, cuda, mps"),
        ("cpu", "8-true", "unknown --precision '8-true'"),
        pytest.param("gpu", "32-true", "--accelerator gpu: no CUDA GPU", marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="this machine has a GPU")),
    ],
)  # fmt: skip
def test_device_names_are_checked_with_one_clear_line(accelerator: str, precision: str, message: str) -> None:
    with pytest.raises(CovidxrError, match=message.replace("(", r"\(")):
        device.resolve(accelerator, precision)


def test_a_placement_runs_a_network_and_hands_back_fp32_on_the_cpu() -> None:
    net = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    for precision in ("32-true", "bf16-mixed"):
        with device.use("cpu", precision) as place:
            out = place.forward(place.module(net), x)
        assert out.dtype == torch.float32 and out.device.type == "cpu"
        assert torch.allclose(out, net(x), atol=1e-6 if precision == "32-true" else 5e-2)
    assert device.current().device.type == ("cuda" if torch.cuda.is_available() else "cpu")  # restored: auto


@pytest.mark.slow
def test_every_inference_stage_asks_the_one_placement(run_dir: Path, tmp_path: Path) -> None:
    from covidxr.evaluation.job import evaluate_run
    from covidxr.explain.job import explain_images
    from covidxr.run import Run
    from covidxr.serve.export import export_run
    from covidxr.serve.predict import predict_to_file

    run = Run(run_dir)
    films = [run.listed.abspath(r) for r in run.records("test", listed=True)[:3]]
    device.used.clear()
    with device.use("cpu"):
        evaluate_run(run, n_resamples=20)
        explain_images(run, films[:1], tmp_path / "explain", mc_passes=3)
        predict_to_file(run, films, tmp_path / "p.csv", workers=0)
        export_run(run, "onnx")
    stages = {stage for stage, kind in device.used if kind == "cpu"}
    assert {"score", "audit-occlusion", "feature-maps", "cam", "mc-dropout", "engine", "export-parity"} <= stages
    assert {kind for _, kind in device.used} == {"cpu"}


@pytest.mark.slow
def test_the_lung_model_asks_the_placement_and_segments_a_batch_as_one_by_one(tmp_path: Path) -> None:
    from covidxr.lungs.segmenter import LungModel, SegmenterSpec, build_net

    spec = SegmenterSpec(input_size=64)
    net, _ = build_net(spec)
    model = LungModel(spec, net.eval(), "sha", tmp_path)
    rng = np.random.default_rng(0)
    films = [rng.random((80, 70), dtype=np.float32), rng.random((90, 90), dtype=np.float32)]
    device.used.clear()
    with device.use("cpu"):
        together = model.probabilities(films)
        alone = [model.probabilities([f])[0] for f in films]
    assert ("lungs", "cpu") in device.used
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
