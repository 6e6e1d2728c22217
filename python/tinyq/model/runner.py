"""Running an ONNX model in onnxruntime's CPU provider at the batch it accepts, and timing it.

Shared by the gate, the auto mode and the tools: a model is fed at the batch its graph fixes, one
sample at a time where an output is not per sample (0-d, or reduced over the batch), else in
chunks of 256; every tensor output comes back with one row per sample.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ModelRef = Union[str, bytes]
LATENCY_BATCHES = (1, 256)


def session(model: ModelRef, threads: int = 1, config: Optional[Dict[str, str]] = None):
    """An onnxruntime CPU session of the model (bytes, or a path: checked to be a regular, non-empty
    file first, so a FIFO never blocks onnxruntime), with `config` as session config entries
    (tinyq.judge.arithmetic.session_config). A path that is not an ONNX model raises
    calibration.ModelFileError (a UsageError) naming the file; other onnxruntime errors pass as they are."""
    import onnxruntime as ort

    from tinyq.model import calibration

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    if isinstance(model, bytes):
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    calibration.check_model_file(model)
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        if "INVALID_PROTOBUF" in str(e) or "No graph was found" in str(e):
            raise calibration.ModelFileError(f"{model}: not an ONNX model (protobuf parse failed in onnxruntime); "
                                             f"pass an .onnx file") from None
        raise


def fixed_batch(sess) -> Optional[int]:
    """The batch size the graph fixes on axis 0 of its inputs, or None when it is dynamic."""
    dims = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    return min(dims) if dims else None


def tensor_outputs(sess) -> Tuple[List[str], Dict[str, str]]:
    """(names of the tensor outputs, {name: type} of the sequence and map outputs)."""
    names, skipped = [], {}
    for o in sess.get_outputs():
        if str(o.type).startswith("tensor("):
            names.append(o.name)
        else:
            skipped[o.name] = str(o.type)
    return names, skipped


def _slice(feeds: Dict[str, np.ndarray], start: int, stop: int) -> Dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in feeds.items()}


def _per_batch(outputs: Sequence[np.ndarray], rows: int) -> bool:
    return all(o.ndim >= 1 and o.shape[0] == rows for o in outputs)


def feed_step(sess, feeds: Dict[str, np.ndarray], batch: int = 256) -> int:
    """How many samples one run takes: the fixed batch, else `batch`, else 1 where an output is
    not per sample (0-d, or reduced over the batch; found by a run on two samples)."""
    fixed = fixed_batch(sess)
    if fixed:
        return fixed
    n = len(next(iter(feeds.values())))
    if n < 2:
        return 1
    names, _ = tensor_outputs(sess)
    return batch if _per_batch(sess.run(names, _slice(feeds, 0, 2)), 2) else 1


def run_all(sess, feeds: Dict[str, np.ndarray], batch: int = 256) -> List[np.ndarray]:
    """Every tensor output of the model over every sample, one row per sample."""
    names, _ = tensor_outputs(sess)
    n = len(next(iter(feeds.values())))
    step = feed_step(sess, feeds, batch)
    chunks = [sess.run(names, _slice(feeds, i, i + step)) for i in range(0, n, step)]
    out = []
    for j in range(len(names)):
        parts = [c[j] for c in chunks]
        rows_match = all(p.ndim >= 1 and p.shape[0] == min(step, n - i * step) for i, p in enumerate(parts))
        out.append(np.concatenate(parts) if rows_match else np.stack(parts))
    return out


def median_latency_ms(sess, feeds: Dict[str, np.ndarray], batch: int, repeats: int) -> float:
    """Median wall time of one run at this batch size, after a warm-up run."""
    names, _ = tensor_outputs(sess)
    n = len(next(iter(feeds.values())))
    idx = np.arange(batch) % n
    x = {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}
    sess.run(names, x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(names, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def latency_table(sess, feeds: Dict[str, np.ndarray], repeats: int) -> Dict[str, float]:
    """Median ms at each of LATENCY_BATCHES, or only at the batch the graph fixes; larger batches
    run a tenth as many times (at least 5)."""
    fixed = fixed_batch(sess)
    batches = (fixed,) if fixed else LATENCY_BATCHES
    return {str(b): median_latency_ms(sess, feeds, b, repeats if b == 1 else max(5, repeats // 10)) for b in batches}


def inputs_only(arrays: Dict[str, np.ndarray], names: Sequence[str]) -> Dict[str, np.ndarray]:
    return {k: arrays[k] for k in names}
