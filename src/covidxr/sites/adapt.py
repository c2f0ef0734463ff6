"""`covidxr adapt`: a finished run fitted to a new hospital from a few of its own labelled films.

What a hospital does before it uses a model trained elsewhere: label a small sample of its own films, retrain the
head on them (the base run's training films mixed in, so the head does not forget), early stopping on the site's
own held-out patients, then temperature and threshold fitted on those. The backbone's features are cached per film
(training.feature_cache), so this takes seconds on a CPU. Without labels only what depends on the site's intensity
statistics can move: the features re-centred and re-scaled to the site's own (`recentre`); the threshold cannot.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from covidxr.config import DataConfig
from covidxr.data.manifest import Manifest, Record
from covidxr.data.prepare import usable_data
from covidxr.engine.loop import fit, make_fabric
from covidxr.errors import CovidxrError
from covidxr.evaluation.calibration import fit_temperature
from covidxr.evaluation.threshold import choose_threshold
from covidxr.results import RunCalibration
from covidxr.run import Run
from covidxr.training.feature_cache import cache_folder, extract_films, feature_store
from covidxr.training.job import quiet_lightning
from covidxr.training.sampling import EpochSampler
from covidxr.training.steps import ClassifierSteps, TensorBatches, make_optimizer

ADAPT_EPOCHS = 200  # the most a site's head trains; early stopping on its held-out patients ends it sooner
ADAPT_PATIENCE = 15


@dataclass
class Site:
    """A site's usable films, their pooled features under the base run's backbone, targets and patients."""

    name: str
    manifest: Manifest
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint()


def site_data(run: Run, paths: list[str], name: str | None = None) -> Site:
    """The site's films, checked and decoded once, refused where one is a film of the base run (same content),
    and their features (the cache's rows where it has them)."""
    data = DataConfig(paths=tuple(paths), task=run.spec.task, positive=run.spec.positive or "COVID-19",  # type: ignore[arg-type]
                      max_pixels=run.config.data.max_pixels)  # fmt: skip
    manifest = usable_data(data)
    base = {r.film: r.path for r in run.manifest.records}
    shared = [r for r in manifest.records if r.film in base]
    if shared:
        raise CovidxrError(f"{shared[0].path}: the same film as the base run's {base[shared[0].film or '']} "
                           f"({len(shared)} shared): a site must be films the run never saw")  # fmt: skip
    x = film_features(run, manifest.root, manifest.records)
    y = np.array([run.label_map.encode(r.label) for r in manifest.records])
    groups = np.array([f"site:{r.group}" for r in manifest.records])
    return Site(name or " + ".join(Path(p).name for p in paths), manifest, x, y, groups)


def film_features(run: Run, root: Path, records: list[Record]) -> np.ndarray:
    """Pooled features of `records` under the run's frozen backbone, from the feature cache (computed where
    missing, on the current placement), in order."""
    if run.spec.freeze != "head" or run.spec.head == "ensemble":
        raise CovidxrError(f"{run.root}: adapt retrains the head on cached features; the base run must be a single "
                           f"--freeze head run (it is freeze {run.spec.freeze}, head {run.spec.head})")  # fmt: skip
    tc, spec = run.config.train, run.spec
    store = feature_store(cache_folder(tc), spec, "pooled", run.config.data.seed)
    extract_films(store, run.net.backbone, spec, root, records, run.label_map, tc, run.config.data.max_pixels)
    return store.gather([r.film or "" for r in records])


def base_rows(run: Run, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` of the base run's training films (features, targets), drawn at random: what keeps the head from
    forgetting the hospitals it learned from."""
    train = run.records("train")
    chosen = np.random.default_rng(seed).permutation(len(train))[: min(n, len(train))]
    records = [train[i] for i in sorted(chosen)]
    x = film_features(run, run.manifest.root, records)
    return x, np.array([run.label_map.encode(r.label) for r in records])


def fit_head(
    run: Run, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], seed: int, lr: float
) -> torch.nn.Module:
    """The base run's head trained further on (features, targets), early-stopped on `val`'s loss, in the one
    loop (engine.loop) on the CPU: a head over a few hundred rows needs no accelerator."""
    head = copy.deepcopy(run.net.head).cpu()
    tc = run.config.train
    x, y = torch.from_numpy(np.ascontiguousarray(train[0])), torch.from_numpy(train[1]).long()
    xv, yv = torch.from_numpy(np.ascontiguousarray(val[0])), torch.from_numpy(val[1]).long()
    sampler = EpochSampler(y.tolist(), seed)
    in_order = EpochSampler(yv.tolist(), seed, shuffle=False)
    batches = TensorBatches(x, y, sampler, tc.batch_size), TensorBatches(xv, yv, in_order, 256)
    steps = ClassifierSteps(run.spec.task, *batches, sampler, None)
    optimizer = make_optimizer(head, tc.optimizer, lr, tc.weight_decay, tc.momentum)
    with quiet_lightning(), tempfile.TemporaryDirectory() as folder:
        loop = fit(make_fabric("cpu"), head, optimizer, steps, Path(folder), epochs=ADAPT_EPOCHS,
                   patience=ADAPT_PATIENCE, seed=seed)  # fmt: skip
    head.load_state_dict(loop.best_state)
    return head.eval()


@torch.no_grad()
def head_logits(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return head.eval()(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


def site_calibration(run: Run, logits: np.ndarray, y: np.ndarray, method: str = "youden") -> RunCalibration:
    """Temperature, then threshold, fitted on the site's own held-out films; the threshold by Youden's J (a site
    sample is small and its classes unequal: max-F1 there calls almost every film positive)."""
    temperature = fit_temperature(logits, y, run.spec.task)
    spec = run.spec.with_calibration(temperature=temperature)
    scores = spec.scores(torch.from_numpy(logits)).numpy()
    threshold = choose_threshold(y, scores[:, 1], method) if run.spec.task == "binary" else 0.5
    return RunCalibration(temperature, threshold, method, False, "site")


def recentred(head: torch.nn.Module, base: np.ndarray, site: np.ndarray) -> torch.nn.Module:
    """The head with the site's features mapped onto the base training features' per-feature mean and spread
    (f' = (f - mean_site) / sd_site * sd_base + mean_base), folded into its first layer: the same architecture,
    so the adapted run works wherever a run works. Needs no labels."""
    head = copy.deepcopy(head)
    first = next(m for m in head.modules() if isinstance(m, torch.nn.Linear))
    scale = torch.from_numpy(base.std(0) / np.maximum(site.std(0), 1e-6)).float()
    shift = torch.from_numpy(base.mean(0)).float() - torch.from_numpy(site.mean(0)).float() * scale
    with torch.no_grad():
        first.bias.add_(first.weight @ shift)
        first.weight.mul_(scale[None, :])
    return head
