"""Calibration sets and soak fixtures: .npz files with one [N, ...] array per ONNX input.

A calibration set (model/tiny/calibration/<id>.npz) holds representative inputs from the
train split; a validation set (model/tiny/validation/<id>.val.npz) holds val-split inputs with
their ground truth, for quantisation choices; a soak fixture (model/tiny/fixtures/<id>.soak.npz) holds held-out inputs plus
their ground truth under the key "target". Both are checked against the model's graph. A shift
set (model/tiny/shift/<id>.shift.npz, tinyq.zoo.shift) holds val-split inputs under degradations
stronger than the corpus holds, and no target.

Every input file is read only when it is a regular file (a FIFO would block the tool forever, a
device never ends), and an .npz only after its zip directory and every array's .npy header fit the
stated caps (MAX_NPZ_BYTES, MAX_SAMPLES, MAX_NPZ_ENTRIES): nothing is decompressed or allocated
for an array whose header declares more. Over a cap is errors.TooLarge (cli.TooLarge, exit 10),
naming the file, the entry, the declared size and the cap.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from numpy.lib import format as npy_format

from tinyq.io import errors
from tinyq.io.fileio import UnreadableFile, file_problem, open_regular  # noqa: F401  (re-exported)

TARGET_KEY = "target"
_FLOAT = onnx.TensorProto.FLOAT

# Caps on an .npz, checked from its zip directory and .npy headers before any array is read.
MAX_NPZ_BYTES = 256 * 1024 * 1024  # decompressed, all entries together (256 MiB)
MAX_SAMPLES = 1_000_000  # rows (axis 0) of any one entry
MAX_NPZ_ENTRIES = 1024  # entries in one archive (one per model input, plus the target)

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries; an empty zip
# What numpy and zipfile raise on a corrupt or truncated .npy member.
_NPY_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError)
_NPY_MAGIC = b"\x93NUMPY"


# --- reading input files ----------------------------------------------------------------------

# An ONNX model, external data included, is a protobuf, which cannot exceed 2 GiB.
MAX_MODEL_BYTES = 2 * 1024**3


class ModelFileError(errors.UsageError, ValueError):
    """A model file tinyq cannot read as an ONNX model (exit 2; also a ValueError, which callers
    of the onnx loaders catch); the message names the file and the fix."""


def check_model_file(path: Union[str, Path]) -> None:
    """ModelFileError unless path is a regular, non-empty file of at most MAX_MODEL_BYTES
    (errors.TooLarge over it): what every reader of a model path checks before opening it."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        fix = "; pass the path of an .onnx file" if problem == "file not found" else ""
        raise ModelFileError(f"{path}: {problem}{fix}")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path}: is an empty file, not an ONNX model; export the model again")
    if size > MAX_MODEL_BYTES:
        raise errors.TooLarge(f"{path}: {size:,} bytes, over the {MAX_MODEL_BYTES:,} bytes (2 GiB) an ONNX protobuf can hold; "
                              f"tinyq quantises tiny models")


def read_model(path: Union[str, Path]) -> onnx.ModelProto:
    """The ONNX model at path, its external data not loaded; ModelFileError naming the file when
    it is not a regular file, is empty, or is not an ONNX protobuf; errors.TooLarge over
    MAX_MODEL_BYTES."""
    path = Path(path)
    check_model_file(path)
    try:
        with open_regular(path) as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except UnreadableFile as e:
        raise ModelFileError(f"{path}: {e}") from None
    if not data:
        raise ModelFileError(f"{path}: is an empty file, not an ONNX model; export the model again")
    if len(data) > MAX_MODEL_BYTES:  # it grew after the check
        raise errors.TooLarge(f"{path}: over the {MAX_MODEL_BYTES:,} bytes (2 GiB) an ONNX protobuf can hold")
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not an ONNX model (protobuf parse failed: {e}); pass an .onnx file") from None
    if not model.HasField("graph"):
        raise ModelFileError(f"{path}: not an ONNX model (it parses as protobuf but holds no graph); pass an .onnx file")
    return model


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
    proto = model if isinstance(model, onnx.ModelProto) else read_model(model)
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
        if want.hasobject:  # a string input: an .npz holds it only pickled, which tinyq never loads
            problems.append(f"key {inp.name!r}: the model's input is a {inp.dtype_name} tensor, which an .npz cannot hold "
                            f"without pickling and tinyq never unpickles; tinyq calibrates and judges numeric inputs only")
            continue
        if a.dtype != want:
            problems.append(f"key {inp.name!r}: dtype {a.dtype}, the model's input is {want.name}; "
                            f"convert with .astype(np.{want.name})")
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


_SMALLER = "pass a smaller set (calibration needs hundreds to thousands of samples)"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def _example(path: Path, inputs: Sequence[GraphInput]) -> str:
    names = ", ".join(f"{i.name}=array" for i in inputs) if inputs else "<input name>=array"
    return f"np.savez({path.with_suffix('.npz').name!r}, {names})"


def _key(info: zipfile.ZipInfo) -> str:
    """The array's name: the member's name without .npy, as numpy.load gives it."""
    return info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename


def _check_entry(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """One member's .npy header, checked against the caps before any data is read: errors.TooLarge
    over MAX_NPZ_BYTES or MAX_SAMPLES, CalibrationError when it is not a numeric .npy array or
    holds less data than its header declares."""
    key = _key(info)
    try:
        with zf.open(info) as m:
            version = npy_format.read_magic(m)  # 3.0 differs from 2.0 only in the header's encoding
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(m)
            header_end = m.tell()
    except _NPY_ERRORS as e:
        raise CalibrationError(path, [f"entry {info.filename!r} is not a .npy array ({e}); write the file with numpy.savez"]) from None
    if dtype.hasobject:
        raise CalibrationError(path, [f"entry {key!r} holds Python objects (dtype {dtype}), which tinyq never unpickles; "
                                      f"save numeric arrays (e.g. array.astype(np.float32))"])
    declared = math.prod(shape) * dtype.itemsize
    if declared > MAX_NPZ_BYTES:
        raise errors.TooLarge(f"{path}: entry {key!r} declares shape {list(shape)} {dtype} = {declared:,} bytes "
                              f"({_mib(declared)}), over tinyq's cap of {MAX_NPZ_BYTES:,} bytes ({_mib(MAX_NPZ_BYTES)}) per "
                              f".npz; {_SMALLER}")
    if shape and shape[0] > MAX_SAMPLES:
        raise errors.TooLarge(f"{path}: entry {key!r} declares {shape[0]:,} samples (axis 0), over tinyq's cap of "
                              f"{MAX_SAMPLES:,}; {_SMALLER}")
    if declared > info.file_size - header_end:
        raise CalibrationError(path, [f"entry {key!r} declares shape {list(shape)} {dtype} ({declared:,} bytes) but holds "
                                      f"{max(info.file_size - header_end, 0):,} bytes of data: truncated or corrupt; "
                                      f"write the file again with numpy.savez"])


def _read_npz(path: Path, inputs: Sequence[GraphInput]) -> Dict[str, np.ndarray]:
    """The arrays of the .npz at path; every cap and header checked before any array is read."""
    try:
        f = open_regular(path)
    except UnreadableFile as e:
        raise CalibrationError(path, [f"{e}; pass the path of an .npz" if str(e) == "file not found" else str(e)]) from None
    with f:
        magic = f.read(len(_NPY_MAGIC))
        f.seek(0)
        if not magic:
            raise CalibrationError(path, [f"is an empty file, not an .npz; write one with {_example(path, inputs)}"])
        if magic.startswith(_NPY_MAGIC):
            raise CalibrationError(path, [f"is a single .npy array, not an .npz; pass an .npz with one entry per model input, "
                                          f"e.g. {_example(path, inputs)}"])
        if not magic.startswith(_ZIP_MAGIC):
            raise CalibrationError(path, [f"not an .npz (zip) archive; write one with {_example(path, inputs)}"])
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise CalibrationError(path, [f"not a readable .npz (zip) archive ({e}); write it again with numpy.savez"]) from None
        with zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_ENTRIES:
                raise errors.TooLarge(f"{path}: {len(infos):,} entries, over tinyq's cap of {MAX_NPZ_ENTRIES:,} per .npz; "
                                      f"pass one entry per model input (plus {TARGET_KEY!r})")
            total = sum(i.file_size for i in infos)
            if total > MAX_NPZ_BYTES:
                big = max(infos, key=lambda i: i.file_size)
                raise errors.TooLarge(f"{path}: its entries decompress to {total:,} bytes ({_mib(total)}; entry {_key(big)!r} "
                                      f"{big.file_size:,} bytes), over tinyq's cap of {MAX_NPZ_BYTES:,} bytes "
                                      f"({_mib(MAX_NPZ_BYTES)}) per .npz; {_SMALLER}")
            for info in infos:
                _check_entry(path, zf, info)
            arrays = {}
            for info in infos:
                try:
                    with zf.open(info) as m:
                        arrays[_key(info)] = npy_format.read_array(m, allow_pickle=False)
                except _NPY_ERRORS as e:
                    raise CalibrationError(path, [f"entry {info.filename!r} cannot be read ({e}): truncated or corrupt; "
                                                  f"write the file again with numpy.savez"]) from None
    return arrays


def load_npz(path: Path, inputs: Sequence[GraphInput], extra_keys: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """Loads and checks an .npz against the graph inputs; raises CalibrationError listing every
    problem, and errors.TooLarge (cli.TooLarge, exit 10) for a file over MAX_NPZ_BYTES, MAX_SAMPLES
    or MAX_NPZ_ENTRIES, found from its zip directory and .npy headers before any array is read."""
    path = Path(path)
    arrays = _read_npz(path, inputs)
    problems = check_arrays(arrays, inputs, extra_keys)
    if problems:
        raise CalibrationError(path, problems)
    return arrays


def load_inputs(path: Path, inputs: Sequence[GraphInput]) -> Dict[str, np.ndarray]:
    """load_npz for a set fed to the model alone (calibration, shift): a `target` key, which a set
    split from labelled data carries, is checked like any key and then dropped, so every tool
    accepts the file register_model accepts."""
    arrays = load_npz(path, inputs, (TARGET_KEY,))
    arrays.pop(TARGET_KEY, None)
    return arrays


def subset(arrays: Dict[str, np.ndarray], n: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """n samples of every array (all when n is at least their count): the same seeded rows of each,
    in their original order."""
    total = len(next(iter(arrays.values())))
    if n >= total:
        return arrays
    rows = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return {k: v[rows] for k, v in arrays.items()}


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
