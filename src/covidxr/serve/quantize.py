"""Static INT8 quantisation of an exported ONNX model (QDQ, per-channel weights), calibrated on the run's
validation images and kept only when it scores like the fp32 model on the test images: AUC within
`MAX_AUC_DROP` and the same label on at least `MIN_AGREEMENT` of them.

Only convolutions are quantised (nearly all the arithmetic): the head's few Gemm nodes stay fp32, since 8-bit
logits move close scores past each other and cost AUC for no measurable speed (a phantom run: all ops lost 0.18
test AUC, convolutions only 0). Without VNNI instructions ONNX Runtime's u8 x s8 kernels can saturate; when the
gate fails, the weights are quantised again with 7-bit range (`reduce_range`) before refusing."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from covidxr.config import Config
from covidxr.data.dataset import XrayDataset
from covidxr.data.labels import LabelMap
from covidxr.data.prepare import list_data
from covidxr.data.split import SPLITS_FILE, read_split
from covidxr.errors import CovidxrError
from covidxr.evaluation.metrics import roc_auc
from covidxr.extras import require
from covidxr.models.spec import ModelSpec
from covidxr.rundir import RunDir
from covidxr.serve.engine import INT8_FILE, ONNX_FILE, onnx_session

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


def _batches(run_dir: Path, spec: ModelSpec, split_name: str, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Preprocessed images of one split of the run's own data, as the engines take them, with their targets."""
    cfg = Config.from_yaml(run_dir / RunDir.config)
    manifest = list_data(cfg.data)
    records = read_split(run_dir / SPLITS_FILE, manifest).records(manifest, split_name)[:limit]
    if not records:
        raise CovidxrError(f"{run_dir}: no {split_name} images to quantise with")
    label_map = LabelMap(spec.task, tuple(spec.classes), spec.positive)  # type: ignore[arg-type]
    dataset = XrayDataset(manifest.root, records, label_map, spec.preprocess, max_pixels=cfg.data.max_pixels)
    for x, y in DataLoader(dataset, batch_size=BATCH):
        yield x.numpy(), y.numpy()


def macro_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Binary: the positive score's AUC; multiclass: the mean one-vs-rest AUC over classes present."""
    if scores.shape[1] == 2:
        return roc_auc(targets == 1, scores[:, 1])
    per_class = [roc_auc(targets == k, scores[:, k]) for k in range(scores.shape[1])]
    return float(np.nanmean(per_class)) if not np.all(np.isnan(per_class)) else float("nan")


def quantize_int8(
    run_dir: Path, max_auc_drop: float = MAX_AUC_DROP, min_agreement: float = MIN_AGREEMENT
) -> QuantizeResult:
    """Write `model.int8.onnx` beside the fp32 `model.onnx` if it passes the gate, else refuse with the numbers."""
    require("export", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = ModelSpec.read(run_dir)
    fp32, target = run_dir / ONNX_FILE, run_dir / INT8_FILE
    calibration = [x for x, _ in _batches(run_dir, spec, "val", CALIBRATION_IMAGES)]

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
            result = _compare(run_dir, spec, fp32, candidate, len(np.concatenate(calibration)), reduce_range)
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


def _compare(
    run_dir: Path, spec: ModelSpec, fp32: Path, int8: Path, calibrated_on: int, reduce_range: bool
) -> QuantizeResult:
    """Both models over the test split, streamed: AUC of each and the share of images given the same label."""
    sessions = [onnx_session(fp32), onnx_session(int8)]
    scores: list[list[np.ndarray]] = [[], []]
    targets = []
    for x, y in _batches(run_dir, spec, "test"):
        targets.append(y)
        for k, session in enumerate(sessions):
            logits = session.run(None, {"image": x})[0]
            scores[k].append(_scores(spec, logits))
    y_all = np.concatenate(targets)
    s32, s8 = np.concatenate(scores[0]), np.concatenate(scores[1])
    auc32, auc8 = macro_auc(y_all, s32), macro_auc(y_all, s8)
    if np.isnan(auc32):
        raise CovidxrError(f"{run_dir}: the test split holds one class; the INT8 AUC gate cannot be checked")
    agreement = float(np.mean(spec.decide(s32) == spec.decide(s8)))
    return QuantizeResult(str(int8), calibrated_on, len(y_all), auc32, auc8, agreement, reduce_range)


def _scores(spec: ModelSpec, logits: np.ndarray) -> np.ndarray:
    """Scores from exported logits (the graph divides by the temperature already)."""
    import torch

    from covidxr.models.head import positive_scores

    return positive_scores(torch.from_numpy(logits), spec.task).numpy()
