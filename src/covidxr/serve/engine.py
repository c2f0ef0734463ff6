"""Inference engines behind one interface: normalised batch in, class scores out. The model's facts (input
size, normalisation, classes, threshold) always come from the run's ModelSpec."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from covidxr.errors import CovidxrError
from covidxr.models.factory import load_model
from covidxr.models.spec import ModelSpec
from covidxr.models.tta import scoring_net

ONNX_FILE = "model.onnx"
ENGINES = ("torch", "onnx")


class Engine:
    spec: ModelSpec

    def logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class scores: the run's temperature applies here (an exported graph has it built in)."""
        return self.spec.scores(torch.from_numpy(self.logits(batch))).numpy()


class TorchEngine(Engine):
    def __init__(self, run_dir: Path) -> None:
        self.net, self.spec = load_model(run_dir)
        self.scoring = scoring_net(self.net, self.spec)

    @torch.no_grad()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.scoring(torch.from_numpy(batch)).numpy()


class OnnxEngine(Engine):
    def __init__(self, run_dir: Path) -> None:
        import onnxruntime as ort

        path = run_dir / ONNX_FILE
        if not path.is_file():
            raise CovidxrError(f"{path}: not found; run `covidxr export {run_dir} --format onnx` first")
        self.spec = replace(ModelSpec.read(run_dir), temperature=1.0)  # the graph divides by it already
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": batch.astype(np.float32)})[0]


def load_engine(run_dir: Path | str, kind: str = "torch") -> Engine:
    if kind not in ENGINES:
        raise CovidxrError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    return TorchEngine(Path(run_dir)) if kind == "torch" else OnnxEngine(Path(run_dir))
