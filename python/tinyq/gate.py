"""Measuring an int8 model against its fp32 source: outputs on the same inputs, the drop
(1 - Pearson r, in float64) and latency on onnxruntime's CPU provider."""

from __future__ import annotations

import time
from typing import Dict, List, Sequence, Union

import numpy as np

ModelRef = Union[str, bytes]


def session(model: ModelRef, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"])


def run_all(sess, feeds: Dict[str, np.ndarray], batch: int = 256) -> List[np.ndarray]:
    """Every output of the model over every sample, fed in batches."""
    n = len(next(iter(feeds.values())))
    chunks: List[List[np.ndarray]] = []
    for i in range(0, n, batch):
        chunks.append(sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()}))
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def pearson_drop(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Pearson r of two output sets, in float64."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(1.0 - np.corrcoef(a, b)[0, 1])


def median_latency_ms(sess, feeds: Dict[str, np.ndarray], batch: int, repeats: int) -> float:
    """Median wall time of one run at this batch size, after a warm-up run."""
    n = len(next(iter(feeds.values())))
    idx = np.arange(batch) % n
    x = {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}
    sess.run(None, x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def inputs_only(arrays: Dict[str, np.ndarray], names: Sequence[str]) -> Dict[str, np.ndarray]:
    return {k: arrays[k] for k in names}
