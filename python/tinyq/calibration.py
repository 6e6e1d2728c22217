"""Calibration sets and soak fixtures: .npz files with one [N, ...] array per ONNX input.

A calibration set (model/tiny/calibration/<id>.npz) holds representative inputs from the
train split; a validation set (model/tiny/validation/<id>.val.npz) holds val-split inputs with
their ground truth, for quantisation choices; a soak fixture (model/tiny/fixtures/<id>.soak.npz) holds held-out inputs plus
their ground truth under the key "target". Both are checked against the model's graph. A shift
set (model/tiny/shift/<id>.shift.npz, tinyq.shift) holds val-split inputs under degradations
stronger than the corpus holds, and no target.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

TARGET_KEY = "target"
_FLOAT = onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class GraphInput:
    name: str
    shape: Tuple[Union[int, str, None], ...]  # int for a fixed dimension, str/None when dynamic
    elem_type: int

    @property
    def dtype_name(self) -> str:
        return onnx.TensorProto.DataType.Name(self.elem_type).lower()


def graph_inputs(model: Union[str, Path, onnx.ModelProto]) -> List[GraphInput]:
    """The graph's real inputs (initialisers listed as inputs by old exporters are skipped)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(GraphInput(vi.name, dims, tt.elem_type))
    return out


class CalibrationError(Exception):
    """The file does not fit the model; .problems lists every violation, one message each."""

    def __init__(self, path: Path, problems: List[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


def check_arrays(arrays: Mapping[str, np.ndarray], inputs: Sequence[GraphInput], extra_keys: Sequence[str] = ()) -> List[str]:
    """Every violation of: names match the graph inputs, no extra keys, float32 for float
    inputs, rank and fixed dimensions match, one shared sample count of at least 1, all finite."""
    problems: List[str] = []
    names = [i.name for i in inputs]
    for name in names:
        if name not in arrays:
            problems.append(f"missing key {name!r}: the model has inputs {names}; add an [N, ...] array named {name!r}")
    for key in arrays:
        if key not in names and key not in extra_keys:
            problems.append(f"extra key {key!r}: the model has no input of that name (inputs: {names}); remove it")
    counts = {}
    for inp in inputs:
        if inp.name not in arrays:
            continue
        a = arrays[inp.name]
        want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inp.elem_type))
        if a.dtype != want:
            problems.append(f"key {inp.name!r}: dtype {a.dtype}, the model's input is {want}; convert with .astype(np.{want})")
        if a.ndim != len(inp.shape):
            problems.append(
                f"key {inp.name!r}: shape {list(a.shape)} has rank {a.ndim}, the model's input is rank {len(inp.shape)} "
                f"{list(inp.shape)}"
            )
        else:
            for axis, (got, dim) in enumerate(zip(a.shape, inp.shape)):
                if axis > 0 and isinstance(dim, int) and dim > 0 and got != dim:
                    problems.append(f"key {inp.name!r}: dimension {axis} is {got}, the model fixes it to {dim}")
            if a.ndim and isinstance(inp.shape[0], int) and inp.shape[0] > 0 and a.shape[0] % inp.shape[0]:
                problems.append(f"key {inp.name!r}: {a.shape[0]} samples do not batch into the fixed batch {inp.shape[0]}")
        if a.ndim == 0 or a.shape[0] < 1:
            problems.append(f"key {inp.name!r}: no samples; it needs at least one along axis 0")
        else:
            counts[inp.name] = a.shape[0]
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            problems.append(f"key {inp.name!r}: {bad} values are NaN or infinite; every value must be finite")
    if len(set(counts.values())) > 1:
        problems.append(f"inputs disagree on the sample count (axis 0): {counts}")
    return problems


def load_npz(path: Path, inputs: Sequence[GraphInput], extra_keys: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """Loads and checks an .npz against the graph inputs; raises CalibrationError listing every problem."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CalibrationError(path, ["file not found"]) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CalibrationError(path, [f"not a readable .npz ({e}); write it with numpy.savez"]) from None
    problems = check_arrays(arrays, inputs, extra_keys)
    if problems:
        raise CalibrationError(path, problems)
    return arrays


# Below these, ranges and judgements rest on too few samples (one calibration sample gave a soak
# drop of 0.2 where 256 gave 5e-4; a 4-sample validation set cannot tell candidates apart).
MIN_CALIBRATION_SAMPLES = 16
MIN_VALIDATION_SAMPLES = 32


def samples(arrays: Mapping[str, np.ndarray]) -> int:
    return int(len(next(iter(arrays.values()))))


def tiny_data_warning(what: str, path: Path, arrays: Mapping[str, np.ndarray], minimum: int) -> Optional[str]:
    """A warning naming the file, its sample count and the minimum, or None when it has enough."""
    n = samples({k: v for k, v in arrays.items() if k != TARGET_KEY})
    if n >= minimum:
        return None
    return (f"WARNING: {path}: {what} has {n} samples, fewer than the {minimum} tinyq needs to trust it; "
            f"collect at least {minimum} (hundreds for calibration)")


def calibration_path(model_dir: Path, model_id: str) -> Path:
    return Path(model_dir) / "calibration" / f"{model_id}.npz"


def validation_path(model_dir: Path, model_id: str) -> Path:
    """Real held-out data from the val split, with targets: what quantisation choices are made on."""
    return Path(model_dir) / "validation" / f"{model_id}.val.npz"


def fixture_path(model_dir: Path, model_id: str) -> Path:
    return Path(model_dir) / "fixtures" / f"{model_id}.soak.npz"


def shift_path(model_dir: Path, model_id: str) -> Path:
    """Val-split inputs under degradations stronger than the corpus holds (tinyq.shift); inputs only."""
    return Path(model_dir) / "shift" / f"{model_id}.shift.npz"


# Range-robust calibration: the calibration set plus noisy copies of it, so activation ranges
# also cover inputs noisier than the training distribution. Each copy adds Gaussian noise of
# sigma = s x (the input's max - min over the set), clipped to that [min, max], seeded.
AUGMENT_SIGMAS = (0.05, 0.1, 0.2)
AUGMENT_SEED = 0


def augmented(arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The arrays followed by one noisy copy per AUGMENT_SIGMAS (float inputs only; others repeat)."""
    rng = np.random.default_rng(AUGMENT_SEED)
    out = {k: [v] for k, v in arrays.items()}
    for s in AUGMENT_SIGMAS:
        for k, v in arrays.items():
            if v.dtype.kind != "f":
                out[k].append(v)
                continue
            lo, hi = float(v.min()), float(v.max())
            noisy = v + rng.standard_normal(v.shape).astype(v.dtype) * np.asarray(s * (hi - lo), v.dtype)
            out[k].append(np.clip(noisy, lo, hi).astype(v.dtype))
    return {k: np.concatenate(parts) for k, parts in out.items()}
