"""Seeded, deterministic training of the zoo models, task metrics, and ONNX export.

Training uses the corpus's train split, picks the epoch with the best validation metric, and
never sees the soak split, which is kept for the numbers in the model cards.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from torch import nn

from tinyq.judge.metrics import filter_metrics, quality_metrics
from tinyq.model import runner
from tinyq.zoo import corpus, restoration, zoo
from tinyq.zoo.corpus import Corpus

NUM_THREADS = 2  # fixed, so reductions run in the same order on every run


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(NUM_THREADS)


@dataclass
class Dataset:
    inputs: Tuple[np.ndarray, ...]  # float32, one per model input
    target: np.ndarray  # VMAF [N] for metrics, reference luma [N, 1, H, W] for the filter

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset(tuple(x[idx] for x in self.inputs), self.target[idx])


class Corpora:
    """The two corpora models train on, each loaded on first use: the video-quality corpus and,
    for models whose spec's data is "restoration", the restoration corpus."""

    def __init__(self, vq: Optional[Path] = None, restoration_path: Optional[Path] = None):
        self.paths = {"vq": Path(vq or corpus.DEFAULT_PATH), "restoration": Path(restoration_path or restoration.DEFAULT_PATH)}
        self._loaded: Dict[str, object] = {}

    @staticmethod
    def key_for(s: zoo.ModelSpec) -> str:
        return "restoration" if s.data == "restoration" else "vq"

    def path_for(self, s: zoo.ModelSpec) -> Path:
        return self.paths[self.key_for(s)]

    def for_spec(self, s: zoo.ModelSpec):
        return self.get(self.key_for(s))

    def get(self, key: str):
        """The "vq" or "restoration" corpus; FileNotFoundError names the command that builds it."""
        if key not in self._loaded:
            path = self.paths[key]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: corpus not found; build it with `tools/bazel run //python:build_corpus -- --kind={key}`")
            self._loaded[key] = restoration.load(path) if key == "restoration" else corpus.load(path)
        return self._loaded[key]


def dataset(s: zoo.ModelSpec, data, split: str) -> Dataset:
    """The split's inputs and targets; data is the corpus the spec trains on (Corpora.for_spec)."""
    if s.data == "restoration":
        dist, ref = data.pairs(split)
        return Dataset((dist,), ref)
    if s.data == "frames":
        x, y = data.frames(split)
        return Dataset((x.astype(np.float32),), y.astype(np.float32))
    ref, dist, vmaf = data.patches(split)
    if s.kind == "filter":
        return Dataset((dist,), ref)
    if len(s.inputs) == 2:
        return Dataset((ref, dist), vmaf)
    return Dataset((dist,), vmaf)


# --- metrics -------------------------------------------------------------------------------


def task_metrics(s: zoo.ModelSpec, prediction: np.ndarray, data: Dataset, with_ssim: bool = False) -> Dict[str, float]:
    """What the model is for: PLCC/SROCC/RMSE against VMAF, or PSNR gain (and SSIM if asked) for a filter."""
    if s.kind == "filter":
        degraded, target = data.inputs[0], data.target
        if s.data == "restoration":  # scored on the windows' centres, as ffmpeg's filters are
            prediction, degraded, target = (restoration.centre(a) for a in (prediction, degraded, target))
        return filter_metrics(prediction, degraded, target, with_ssim)
    return quality_metrics(prediction, data.target)


def headline(s: zoo.ModelSpec, metrics: Dict[str, float]) -> float:
    return metrics["psnr_gain_db"] if s.kind == "filter" else metrics["plcc"]


def luma_variance_baseline(corpus: Corpus, split: str = "soak") -> Dict[str, float]:
    """The no-reference baseline: VMAF linearly fitted (on train) to the distorted patch's luma variance."""
    _, dist_tr, y_tr = corpus.patches("train")
    _, dist_so, y_so = corpus.patches(split)
    v_tr = dist_tr.reshape(len(dist_tr), -1).var(axis=1)
    v_so = dist_so.reshape(len(dist_so), -1).var(axis=1)
    a, b = np.polyfit(v_tr.astype(np.float64), y_tr.astype(np.float64), 1)
    return quality_metrics(a * v_so + b, y_so)


# --- training ------------------------------------------------------------------------------


def predict_torch(model: nn.Module, inputs: Sequence[np.ndarray], batch: int = 512) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(inputs[0]), batch):
            outs.append(model(*(torch.from_numpy(x[i : i + batch]) for x in inputs)).numpy())
    return np.concatenate(outs)


def _init_scales(s: zoo.ModelSpec, model: nn.Module, train: Dataset) -> None:
    with torch.no_grad():
        if s.data == "frames":
            x = torch.from_numpy(train.inputs[0]).double()
            model.input_mean.copy_(x.mean(0).float())
            model.input_std.copy_(x.std(0).clamp_min(1e-6).float())
        if s.kind != "filter":
            y = torch.from_numpy(train.target).double()
            model.output_mean.fill_(float(y.mean()))
            model.output_std.fill_(float(y.std()))


def _augment(tensors: List[torch.Tensor], gen: torch.Generator) -> List[torch.Tensor]:
    """One of the 8 flips/transposes of a square patch, the same for every tensor of the batch.

    Patch corners lie on the codec block grid and patches are a multiple of it in size, so every
    transform keeps block edges on the grid.
    """
    k = int(torch.randint(0, 8, (1,), generator=gen))
    out = []
    for t in tensors:
        if k & 1:
            t = t.flip(3)
        if k & 2:
            t = t.flip(2)
        if k & 4:
            t = t.transpose(2, 3)
        out.append(t)
    return out


@dataclass
class FitResult:
    model: nn.Module
    history: List[Dict[str, float]]
    best_epoch: int
    wall_time_s: float


def _loss(s: zoo.ModelSpec, pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    if s.kind == "filter":
        # Mean per-patch log-MSE: minimising it maximises the mean PSNR gain the card reports,
        # where plain MSE would ignore near-lossless patches that any error costs decibels on.
        return torch.mean(torch.log10(torch.mean((pred - target) ** 2, dim=(1, 2, 3)) + 1e-6))
    return torch.mean(((pred - target) / scale) ** 2)


def fit(
    s: zoo.ModelSpec,
    train: Dataset,
    val: Dataset,
    *,
    epochs: Optional[int] = None,
    seed: int = 0,
    lr: Optional[float] = None,
    model: Optional[nn.Module] = None,
    progress: Callable[[str], None] = print,
    phase: str = "fp32",
) -> FitResult:
    """Adam with a cosine schedule; returns the weights of the epoch with the best val metric."""
    set_determinism(seed)
    start = time.monotonic()
    if model is None:
        model = s.build()
        _init_scales(s, model, train)
    epochs = s.epochs if epochs is None else epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr or s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.from_numpy(x) for x in train.inputs]
    y = torch.from_numpy(train.target)
    scale = 1.0 if s.kind == "filter" else float(train.target.std())
    best, best_state, best_epoch, history = -np.inf, copy.deepcopy(model.state_dict()), 0, []
    for epoch in range(1, epochs + 1):
        epoch_start = time.monotonic()
        model.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(y), s.batch_size):
            idx = order[i : i + s.batch_size]
            batch = [x[idx] for x in xs]
            target = y[idx]
            if s.data in ("patches", "restoration"):
                *batch, target = _augment(batch + [target], gen) if s.kind == "filter" else [*_augment(batch, gen), target]
            pred = model(*batch)
            loss = _loss(s, pred, target.reshape(pred.shape), scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        metrics = task_metrics(s, predict_torch(model, val.inputs), val)
        score = headline(s, metrics)
        history.append({"epoch": epoch, "loss": total / len(y), "wall_time_s": round(time.monotonic() - epoch_start, 3),
                        **{f"val_{k}": v for k, v in metrics.items()}})
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
        name = "val_psnr_gain_db" if s.kind == "filter" else "val_plcc"
        progress(f"{s.id} [{phase}] epoch {epoch}/{epochs} loss {total / len(y):.6f} {name} {score:.5f}")
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, history, best_epoch, time.monotonic() - start)


# --- export --------------------------------------------------------------------------------


def export_onnx(s: zoo.ModelSpec, model: nn.Module) -> bytes:
    """ONNX opset 17 with dynamic batch (and spatial) axes; the same weights give the same bytes."""
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            zoo.example_inputs(s),
            buf,
            input_names=[i.name for i in s.inputs],
            output_names=[o.name for o in s.outputs],
            dynamic_axes=zoo.dynamic_axes(s),
            opset_version=zoo.OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    # Initialisers are not graph I/O; annotating them in value_info is the trap that later
    # breaks quantize_dynamic ("Inferred shape and existing shape differ").
    inits = {t.name for t in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in inits]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    proto.producer_name = "tinyq"
    proto.producer_version = ""
    proto.doc_string = f"{s.id}: {s.description}"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def predict_onnx(model_bytes_or_path, inputs: Sequence[np.ndarray], names: Sequence[str], batch: int = 512) -> np.ndarray:
    """The first output of an ONNX model on onnxruntime's CPU provider."""
    model = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return runner.run_all(runner.session(model, threads=NUM_THREADS), dict(zip(names, inputs)), batch)[0]
