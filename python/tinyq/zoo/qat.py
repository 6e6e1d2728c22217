"""Quantisation-aware training: QatConfig and run_qat().

Phases:
  1. fp32 warm start: the shipped fp32 weights, loaded from the registry's .onnx (whose
     initialisers keep the module's parameter names), or `epochs_fp32` epochs of training.
  2. Fake-quant insertion: symmetric per-tensor int8 activations, symmetric per-channel int8
     weights.
  3. QAT fine-tune at lr_qat (default: the fp32 learning rate / 10), same data and loss.
  4. Export: the QAT-conditioned weights are copied into a fresh fp32 module, exported to ONNX,
     and quantised with onnxruntime's static QDQ, calibrated on `n_calibration` samples of the
     real train split (never random tensors). A check confirms the QDQ nodes survived.

Fake-quant backend: torchao's PT2E (torch.export, prepare_qat_pt2e), the maintained path;
torch.ao.quantization's FX prepare_qat_fx is deprecated upstream. torchao 0.18.0 works with the
locked torch 2.13 (it is in the lock). There is no XNNPACK quantizer in torchao any more (it moved
to ExecuTorch), so X86InductorQuantizer's QAT config is used with symmetric activations. Only
insert_fake_quant() knows the backend, so changing it is this one function.
"""

from __future__ import annotations

import copy
import time
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from tinyq.io.fileio import read_regular
from tinyq.quant import quantize
from tinyq.zoo import corpus, train, zoo


class ConfigError(Exception):
    """The YAML config is wrong; the message names the file, the key and the fix."""


@dataclass
class TrainConfig:
    """Mirrors the zoo's training settings for the model (tinyq.zoo.zoo)."""

    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0


@dataclass
class QatConfig:
    model: str
    train: TrainConfig = field(default_factory=TrainConfig)
    warm_start: str = "shipped"  # "shipped" (the registry's fp32 weights) or "train"
    epochs_fp32: int = 20
    epochs_qat: int = 10
    lr_qat: Optional[float] = None  # default: train.lr / 10
    n_calibration: int = 64
    calibrate_method: str = "percentile"
    per_channel: bool = True
    fp32_nodes: List[str] = field(default_factory=list)  # left fp32 in the export, as ptq_static --fp32-nodes

    @property
    def effective_lr_qat(self) -> float:
        return self.lr_qat if self.lr_qat is not None else self.train.lr / 10


# Field types as written in the dataclasses (annotations are strings here).
_TYPES = {"int": (int, "an integer"), "float": (float, "a number"), "str": (str, "a string"), "bool": (bool, "true or false"),
          "Optional[float]": (float, "a number or null"), "List[str]": (list, "a list of node names")}


def _value(path: Path, key: str, value: Any, type_name: str) -> Any:
    want, words = _TYPES[type_name]
    if value is None and type_name.startswith("Optional"):
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key} must be {words}, got {value!r}")
    if want is list and not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path}: {key} must be {words} (non-empty strings), got {value!r}")
    return value


def _fill(path: Path, prefix: str, cls, raw: Any):
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {prefix or 'the config'} must be a mapping")
    known = {f.name: f.type for f in fields(cls)}

    def label(name: str) -> str:  # the key as written in the YAML file
        return prefix + name if prefix or name in ("model", "train") else "qat." + name

    for name in raw:
        if name not in known:
            raise ConfigError(f"{path}: unknown key {label(name)}; known keys here: {', '.join(known)}")
    out = {}
    for name, value in raw.items():
        if known[name] == "TrainConfig":
            out[name] = _fill(path, "train.", TrainConfig, value)
        else:
            out[name] = _value(path, label(name), value, known[name])
    return cls(**out)


MAX_CONFIG_BYTES = 1024 * 1024  # a QAT config is a page of YAML


def load_config(path: Path) -> QatConfig:
    """Reads and validates python/configs/<id>_qat.yaml: `model`, a `train:` block mirroring the
    zoo's training settings, and a `qat:` block with the phase settings."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(read_regular(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config not found") from None
    except OSError as e:  # a FIFO, a device, a directory, or over the cap: refused without blocking or reading it whole
        raise ConfigError(f"{path}: {e.strerror}; pass a regular YAML file of at most {MAX_CONFIG_BYTES} bytes") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping with model, train and qat")
    for key in raw:
        if key not in ("model", "train", "qat"):
            raise ConfigError(f"{path}: unknown key {key}; known keys: model, train, qat")
    if not isinstance(raw.get("model"), str):
        raise ConfigError(f"{path}: model is required and must be a zoo model id ({', '.join(zoo.SPECS)})")
    qat = raw.get("qat") or {}
    if not isinstance(qat, dict):
        raise ConfigError(f"{path}: qat must be a mapping")
    for key in qat:
        if key in ("model", "train"):
            raise ConfigError(f"{path}: unknown key qat.{key}")
    cfg = _fill(path, "", QatConfig, {"model": raw["model"], **({"train": raw["train"]} if "train" in raw else {}),
                                      **{f"{k}": v for k, v in qat.items()}})
    if cfg.model not in zoo.SPECS:
        raise ConfigError(f"{path}: model {cfg.model!r} is not a zoo model ({', '.join(zoo.SPECS)})")
    if cfg.warm_start not in ("shipped", "train"):
        raise ConfigError(f"{path}: qat.warm_start must be shipped or train, got {cfg.warm_start!r}")
    if cfg.calibrate_method not in ("minmax", "entropy", "percentile"):
        raise ConfigError(f"{path}: qat.calibrate_method must be minmax, entropy or percentile")
    if cfg.epochs_fp32 < 0 or cfg.epochs_qat < 0 or cfg.n_calibration < 1:
        raise ConfigError(f"{path}: qat epochs must not be negative and n_calibration must be at least 1")
    return cfg


def load_onnx_weights(model: torch.nn.Module, onnx_path: Path) -> None:
    """Loads the module's parameters and buffers from the initialisers of its own export."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    state = model.state_dict()
    missing = [k for k in state if k not in inits]
    if missing:
        raise ValueError(f"{onnx_path}: no initialiser for {missing[:3]}; was it exported by tinyq's trainer?")
    for k, v in state.items():
        if tuple(inits[k].shape) != tuple(v.shape):
            raise ValueError(f"{onnx_path}: initialiser {k} has shape {inits[k].shape}, the module {tuple(v.shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(inits[k])) for k in state})


def insert_fake_quant(model: torch.nn.Module, example_inputs, spec: zoo.ModelSpec) -> torch.nn.Module:
    """The one place that knows the fake-quant backend: torchao's PT2E (see the module docstring).

    X86InductorQuantizer's QAT config, with its activation specs made symmetric per-tensor int8;
    its weights are already symmetric per-channel int8.
    """
    import dataclasses

    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=True)
    symmetric = dataclasses.replace(config.input_activation, dtype=torch.int8, quant_min=-128, quant_max=127,
                                    qscheme=torch.per_tensor_symmetric)
    config = dataclasses.replace(config, input_activation=symmetric,
                                 output_activation=symmetric if config.output_activation is not None else None)
    # The exported graph keeps the model's dynamic axes (batch; height and width for the CNNs).
    dims = {d: torch.export.Dim(d, min=1 if d == zoo.BATCH else 8, max=1 << 16) for d in (zoo.BATCH, zoo.HEIGHT, zoo.WIDTH)}
    if spec.arch.get("even_height_width"):  # the half-resolution filter folds 2x2 pixel blocks
        dims.update({d: 2 * torch.export.Dim(f"half_{d}", min=4, max=1 << 15) for d in (zoo.HEIGHT, zoo.WIDTH)})
    dynamic = tuple({axis: dims[d] for axis, d in enumerate(io.shape) if isinstance(d, str)} for io in spec.inputs)
    exported = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic).module()
    prepared = prepare_qat_pt2e(exported, X86InductorQuantizer().set_global(config))
    allow_exported_model_train_eval(prepared)  # so the fp32 training loop can switch modes
    schemes = {(m.qscheme, m.dtype) for m in prepared.modules() if hasattr(m, "qscheme") and hasattr(m, "fake_quant_enabled")}
    want = {(torch.per_tensor_symmetric, torch.int8), (torch.per_channel_symmetric, torch.int8)}
    if not schemes or not schemes <= want:
        raise RuntimeError(f"unexpected fake-quant schemes {schemes}; expected {want}")
    prepared.train()
    return prepared


def copy_conditioned_weights(qat_model: torch.nn.Module, fresh: torch.nn.Module) -> None:
    """QAT-conditioned parameters and buffers into a fresh fp32 module (fake-quant state dropped)."""
    qat_state = qat_model.state_dict()
    target = fresh.state_dict()
    missing = [k for k in target if k not in qat_state]
    if missing:
        raise RuntimeError(f"the QAT model lost {missing[:3]}")
    fresh.load_state_dict({k: qat_state[k].detach().clone() for k in target})


def calibration_arrays(cfg: QatConfig, spec: zoo.ModelSpec, train_set: train.Dataset) -> Dict[str, np.ndarray]:
    """`n_calibration` seeded samples of the real train split, one array per model input."""
    idx = np.sort(np.random.default_rng(cfg.train.seed).choice(len(train_set), cfg.n_calibration, replace=False))
    return {io.name: x[idx] for io, x in zip(spec.inputs, train_set.inputs)}


@dataclass
class QatResult:
    int8_bytes: bytes
    fp32_bytes: bytes  # the QAT-conditioned fp32 export
    n_params: int
    phases: Dict[str, Dict[str, Any]]
    qdq_ops: Dict[str, int]


def run_qat(cfg: QatConfig, data: corpus.Corpus, *, shipped_onnx: Optional[Path], smoke: bool = False,
            progress: Callable[[str], None] = print) -> QatResult:
    """The four phases; smoke skips both training phases for a fast round trip."""
    spec = zoo.spec(cfg.model)
    spec = dataclasses.replace(spec, lr=cfg.train.lr, batch_size=cfg.train.batch_size, weight_decay=cfg.train.weight_decay)
    train_set, val_set = train.dataset(spec, data, "train"), train.dataset(spec, data, "val")
    phases: Dict[str, Dict[str, Any]] = {}

    # Phase 1: fp32 warm start.
    train.set_determinism(cfg.train.seed)
    start = time.monotonic()
    if cfg.warm_start == "shipped":
        model = spec.build()
        load_onnx_weights(model, shipped_onnx)
        phases["fp32"] = {"warm_start": f"shipped weights from {shipped_onnx.name}", "epochs": 0}
    elif smoke:
        model = spec.build()
        phases["fp32"] = {"warm_start": "untrained (smoke)", "epochs": 0}
    else:
        fit = train.fit(spec, train_set, val_set, epochs=cfg.epochs_fp32, seed=cfg.train.seed, progress=progress, phase="fp32")
        model = fit.model
        phases["fp32"] = {"warm_start": "trained", "epochs": cfg.epochs_fp32, "best_epoch": fit.best_epoch}
    phases["fp32"]["wall_time_s"] = round(time.monotonic() - start, 2)
    # The fp32 cost of an epoch, measured on a copy (median of 3), so the QAT/fp32 ratio compares like with like.
    if not smoke:
        probe = train.fit(spec, train_set, val_set, epochs=3, seed=cfg.train.seed, model=copy.deepcopy(model),
                          progress=lambda s: None, phase="probe")
        phases["fp32"]["epoch_time_s"] = float(np.median([h["wall_time_s"] for h in probe.history]))
    else:
        phases["fp32"]["epoch_time_s"] = None

    # Phase 2: fake-quant insertion.
    qat_model = insert_fake_quant(copy.deepcopy(model), zoo.example_inputs(spec), spec)
    phases["fake_quant"] = {"backend": "torchao PT2E prepare_qat_pt2e (X86InductorQuantizer)", "activations": "int8 symmetric per-tensor",
                            "weights": "int8 symmetric per-channel"}

    # Phase 3: QAT fine-tune at the reduced learning rate.
    start = time.monotonic()
    epochs_qat = 0 if smoke else cfg.epochs_qat
    if epochs_qat:
        fit = train.fit(spec, train_set, val_set, epochs=epochs_qat, seed=cfg.train.seed, lr=cfg.effective_lr_qat,
                        model=qat_model, progress=progress, phase="qat")
        qat_model = fit.model
        phases["qat"] = {"epochs": epochs_qat, "lr": cfg.effective_lr_qat, "best_epoch": fit.best_epoch,
                         "epoch_time_s": float(np.median([h["wall_time_s"] for h in fit.history]))}
    else:
        phases["qat"] = {"epochs": 0, "lr": cfg.effective_lr_qat}
    phases["qat"]["wall_time_s"] = round(time.monotonic() - start, 2)
    phases["qat"].setdefault("epoch_time_s", None)

    # Phase 4: conditioned weights -> fresh fp32 module -> ONNX -> static QDQ on real train data.
    start = time.monotonic()
    fresh = spec.build()
    copy_conditioned_weights(qat_model, fresh)
    fp32_bytes = train.export_onnx(spec, fresh)
    arrays = calibration_arrays(cfg, spec, train_set)
    fp32_model = onnx.load_from_string(fp32_bytes)
    unknown = sorted(set(cfg.fp32_nodes) - {n.name for n in fp32_model.graph.node})
    if unknown:
        raise ConfigError(f"qat.fp32_nodes: {unknown} are not nodes of the exported graph; list them with "
                          f"`tools/bazel run //python:ptq_auto -- --id {cfg.model}`")
    int8 = quantize.quantize_static_qdq(fp32_model, arrays, method=cfg.calibrate_method, per_channel=cfg.per_channel,
                                        exclude_nodes=cfg.fp32_nodes)
    ops = [n.op_type for n in onnx.load_from_string(int8).graph.node]
    qdq = {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}
    if not qdq["QuantizeLinear"] or not qdq["DequantizeLinear"]:
        raise RuntimeError(f"the exported model lost its QDQ nodes: {qdq}")
    phases["export"] = {"calibration": f"{cfg.n_calibration} samples of the train split", "method": cfg.calibrate_method,
                        "per_channel": cfg.per_channel, "fp32_nodes": list(cfg.fp32_nodes), "wall_time_s": round(time.monotonic() - start, 2)}
    return QatResult(int8, fp32_bytes, zoo.n_params(fresh), phases, qdq)
