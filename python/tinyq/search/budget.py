"""The search's memory and time budgets, so that ptq_auto ends with a verdict instead of being killed.

Memory: onnxruntime's Entropy and Percentile calibration keeps every float tensor the graph computes,
for every calibration sample, until it builds its histograms (22 GB on a pretrained file
classifier, where MinMax calibration of the same data peaks near 1 GB). Those methods are therefore
calibrated on a seeded subset small enough for the budget, and the report says how many samples
they used. Time: candidates not measured when the time budget runs out are listed as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np
import onnx

DEFAULT_MAX_MEMORY_GIB = 8.0  # a 2-core, 24 GiB machine keeps room for onnxruntime, the data and the OS
DEFAULT_MAX_MINUTES = 30.0
HISTOGRAM_METHODS = ("entropy", "percentile")
_OVERHEAD = 2.0  # onnxruntime's copies while it merges the stored outputs into histograms


@dataclass(frozen=True)
class HistogramSamples:
    used: int  # calibration samples Entropy and Percentile calibrate on
    given: int
    bytes_per_sample: int  # float activations one sample produces, as measured

    def as_dict(self) -> Dict[str, int]:
        return {"used": self.used, "given": self.given, "activation_bytes_per_sample": self.bytes_per_sample}


def activation_bytes_per_sample(model: onnx.ModelProto, calibration: Dict[str, np.ndarray]) -> int:
    """Bytes of every float tensor the main graph computes for one calibration sample, measured by
    running it with each node output exposed (what a histogram calibrator stores per sample)."""
    from tinyq.model import runner

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = runner.session(probe.SerializeToString())
    feeds = {k: v[:1] for k, v in calibration.items() if k in {i.name for i in session.get_inputs()}}
    outputs = session.run(None, feeds)
    return int(sum(o.nbytes for o in outputs if isinstance(o, np.ndarray) and np.issubdtype(o.dtype, np.floating)))


def histogram_samples(model: onnx.ModelProto, calibration: Dict[str, np.ndarray], max_gib: float) -> HistogramSamples:
    """How many calibration samples the histogram methods may keep within max_gib."""
    given = len(next(iter(calibration.values())))
    per_sample = max(activation_bytes_per_sample(model, calibration), 1)
    allowed = int(max_gib * 2**30 / (per_sample * _OVERHEAD))
    return HistogramSamples(max(1, min(given, allowed)), given, per_sample)
