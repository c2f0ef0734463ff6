"""Static INT8 quantisation of an exported ONNX model (QDQ, per-channel weights), calibrated on the run's
validation images and kept only when it scores like the fp32 model on the test images: AUC within
`MAX_AUC_DROP` and the same label on at least `MIN_AGREEMENT` of them.

Only convolutions are quantised (nearly all the arithmetic): the head's few Gemm nodes stay fp32, since 8-bit
logits move close scores past each other and cost AUC for no measurable speed (a phantom run: all ops lost 0.18
test AUC, convolutions only 0). Without VNNI instructions ONNX Runtime's u8 x s8 kernels can saturate; when the
gate fails, the weights are quantised again with 7-bit range (`reduce_range`) before refusing."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidxr.data.dataset import XrayDataset
from covidxr.errors import CovidxrError
from covidxr.extras import require
from covidxr.models.spec import ModelSpec
from covidxr.run import Run
from covidxr.serve.engine import INT8_FILE, ONNX_FILE, onnx_session
from covidxr.training.metrics import epoch_metrics

MAX_AUC_DROP = 0.005
MIN_AGREEMENT = 0.99
CALIBRATION_IMAGES = 64
BATCH = 16


@dataclass
class QuantizeResult:
    path: str
    calibration_images: int
    test_images: int
    fp32_auc: float
    int8_auc: float
    agreement: float
    reduce_range: bool

    @property
    def auc_drop(self) -> float:
        return self.fp32_auc - self.int8_auc

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"auc_drop": self.auc_drop}


def _split_sets(run: Run) -> dict[str, XrayDataset]:
    """The run's val (calibration, at most CALIBRATION_IMAGES) and test images, preprocessed as the engines
    take them (the Run lists the data set and reads the split once)."""
    manifest, spec, sets = run.listed, run.spec, {}
    for name, limit in (("val", CALIBRATION_IMAGES), ("test", None)):
        records = run.records(name, listed=True)[:limit]
        if not records:
            raise CovidxrError(f"{run.root}: no {name} images to quantise with")
        sets[name] = XrayDataset(manifest.root, records, run.label_map, spec.preprocess,
                                 max_pixels=run.config.data.max_pixels)  # fmt: skip
    return sets


def _scored(session: Any, spec: ModelSpec, images: XrayDataset) -> tuple[np.ndarray, np.ndarray]:
    """(scores, targets) of one ONNX model over a set, streamed in batches (the graph holds the temperature)."""
    unit = spec.with_calibration(temperature=1.0)
    scores, targets = [], []
    for x, y in DataLoader(images, batch_size=BATCH):
        scores.append(unit.scores(torch.from_numpy(session.run(None, {"image": x.numpy()})[0])).numpy())
        targets.append(y.numpy())
    return np.concatenate(scores), np.concatenate(targets)


def quantize_int8(
    run: Run | Path, max_auc_drop: float = MAX_AUC_DROP, min_agreement: float = MIN_AGREEMENT
) -> QuantizeResult:
    """Write `model.int8.onnx` beside the fp32 `model.onnx` if it passes the gate, else refuse with the numbers."""
    require("export", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    run = Run.open(run)
    run_dir, spec = run.root, run.spec
    fp32, target = run_dir / ONNX_FILE, run_dir / INT8_FILE
    sets = _split_sets(run)
    calibration = [x.numpy() for x, _ in DataLoader(sets["val"], batch_size=BATCH)]
    fp32_scores, targets = _scored(onnx_session(fp32), spec, sets["test"])  # once, whatever the attempts
    fp32_auc = epoch_metrics(fp32_scores, targets, spec.task)["auc"]
    if np.isnan(fp32_auc):
        raise CovidxrError(f"{run_dir}: the test split holds one class; the INT8 AUC gate cannot be checked")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else {"image": batch}

    prepared = run_dir / f".{ONNX_FILE}.pre.onnx"
    candidate = run_dir / f".{INT8_FILE}.tmp.onnx"
    tried = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantiser chatter (pre-processing advice, opset notes)
            quant_pre_process(str(fp32), str(prepared))
        for reduce_range in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(
                    str(prepared), str(candidate), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                    op_types_to_quantize=["Conv"],
                )  # fmt: skip
            int8_scores, _ = _scored(onnx_session(candidate), spec, sets["test"])
            result = QuantizeResult(
                str(candidate), len(sets["val"]), len(targets), fp32_auc,
                epoch_metrics(int8_scores, targets, spec.task)["auc"],
                float(np.mean(spec.decide(fp32_scores) == spec.decide(int8_scores))), reduce_range,
            )  # fmt: skip
            tried.append(result)
            if result.auc_drop <= max_auc_drop and result.agreement >= min_agreement:
                candidate.replace(target)
                result.path = str(target)
                return result
    finally:
        prepared.unlink(missing_ok=True)
        candidate.unlink(missing_ok=True)
    target.unlink(missing_ok=True)  # an older INT8 file no longer matches this export
    numbers = "; ".join(
        f"{'7-bit' if r.reduce_range else '8-bit'} weights: test AUC {r.int8_auc:.4f} vs fp32 {r.fp32_auc:.4f} "
        f"(drop {r.auc_drop:.4f}, allowed {max_auc_drop}), labels agree on {r.agreement:.1%} of {r.test_images} "
        f"test images (needed {min_agreement:.0%})"
        for r in tried
    )
    raise CovidxrError(f"INT8 model refused, the fp32 {fp32.name} is kept: {numbers}")
