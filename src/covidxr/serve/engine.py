"""Inference engines behind one interface: normalised batch in, class scores out. The model's facts (input
size, normalisation, classes, threshold) always come from the run's ModelSpec. `onnx` runs the INT8 model when
`covidxr export --quantize int8` kept one (it passed the accuracy gate), else the fp32 export; `onnx-fp32`
always the fp32 one."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from covidxr.device import current
from covidxr.errors import CovidxrError
from covidxr.extras import require
from covidxr.models.spec import ModelSpec
from covidxr.models.tta import scoring_net
from covidxr.run import Run
from covidxr.rundir import RunDir
from covidxr.threads import usable_cores

ONNX_FILE = RunDir.onnx
INT8_FILE = RunDir.onnx_int8
ENGINES = ("torch", "onnx", "onnx-fp32")


@cache
def physical_cores() -> int:
    """Cores this process may use, counting hyperthread siblings once (ONNX Runtime's intra-op threads gain
    nothing from siblings and lose to their contention)."""
    import psutil

    allowed = usable_cores()
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


def onnx_session(path: Path, threads: int | None = None):
    """A CPU session with every graph optimisation and one intra-op thread per physical core."""
    require("export", "onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Engine:
    spec: ModelSpec

    def logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class scores: the run's temperature applies here (an exported graph has it built in)."""
        return self.spec.scores(torch.from_numpy(self.logits(batch))).numpy()


class TorchEngine(Engine):
    def __init__(self, run: Run) -> None:
        self.place = current().stage("engine")
        self.net, self.spec = self.place.module(run.net), run.spec
        self.scoring = scoring_net(self.net, self.spec)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.place.forward(self.scoring, torch.from_numpy(batch)).numpy()


class OnnxEngine(Engine):
    def __init__(self, run: Run | Path, int8: bool = True) -> None:
        require("export", "onnxruntime")
        run = Run.open(run)
        run_dir = run.root
        path = run_dir / ONNX_FILE
        if not path.is_file():
            raise CovidxrError(f"{path}: not found; run `covidxr export {run_dir} --format onnx` first")
        if int8 and (run_dir / INT8_FILE).is_file():
            path = run_dir / INT8_FILE
        self.path = path
        self.spec = run.spec.with_calibration(temperature=1.0)  # the graph divides by it already
        self.session = onnx_session(path)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": batch.astype(np.float32)})[0]


def load_engine(run: Run | Path | str, kind: str = "torch") -> Engine:
    if kind not in ENGINES:
        raise CovidxrError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    run = Run.open(run)
    return TorchEngine(run) if kind == "torch" else OnnxEngine(run, int8=kind == "onnx")
