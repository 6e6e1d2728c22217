"""Execution providers for the per-EP accuracy harness: each one a row, and each honest.

A provider either runs a model or is `unavailable` with the reason. One that runs is checked
for having really run the graph: ORT's session providers and its profiler's per-node placement
(a CUDA request that lands on the CPU provider is flagged), and OpenVINO's compiled inference
precision and per-node runtime precision (an f16 hint that the plugin runs as bf16 or f32 is
flagged). Every runner offers the onnxruntime session surface tinyq.judge.gate compares through.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

ORT_CPU = "CPUExecutionProvider"
ORT_CUDA = "CUDAExecutionProvider"


class Unavailable(Exception):
    """The provider is not installed or has no device; the reason goes in the row."""


class SessionFailed(Exception):
    """The provider is there but cannot load this model: an error row, which --gate counts."""


@dataclass
class Variant:
    name: str  # the row label
    ep: str  # the --eps family: cpu, cuda or openvino
    description: str


VARIANTS: Dict[str, List[Variant]] = {
    "cpu": [
        Variant("ort-cpu", "cpu", "onnxruntime CPUExecutionProvider, default session options"),
        Variant("ort-cpu-x64quantprecision", "cpu", "onnxruntime CPU with session.x64quantprecision=1 "
                "(precise x64 int8 kernels instead of the saturating VNNI/AVX2 u8s8 path)"),
    ],
    "cuda": [Variant("ort-cuda", "cuda", "onnxruntime CUDAExecutionProvider")],
    "openvino": [
        Variant("openvino-{device}-f32", "openvino", "OpenVINO runtime, INFERENCE_PRECISION_HINT f32"),
        Variant("openvino-{device}-f16", "openvino", "OpenVINO runtime, INFERENCE_PRECISION_HINT f16"),
    ],
}


@dataclass
class _Io:
    name: str
    shape: List[object]
    type: str = "tensor(float)"


@dataclass
class Placement:
    """Where the graph actually ran, and whether that is what was asked for."""

    ran_on: List[str] = field(default_factory=list)
    nodes: Dict[str, int] = field(default_factory=dict)  # provider or runtime precision -> node count
    precision: Optional[str] = None
    flags: List[str] = field(default_factory=list)
    fell_back: bool = False  # the session does not run on the requested provider at all


class _Runner:
    """A context manager: `with runner(...) as r:` releases the runner's resources on exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass


class OrtRunner(_Runner):
    """An onnxruntime session on the requested provider, with its placement read back. Its
    profile goes to a private temporary directory, removed by close()."""

    def __init__(self, model: str, variant: Variant):
        import onnxruntime as ort

        want = ORT_CUDA if variant.ep == "cuda" else ORT_CPU
        if want not in ort.get_available_providers():
            raise Unavailable(f"this onnxruntime build ({ort.__version__}) has no {want}; "
                              f"available: {', '.join(ort.get_available_providers())} (build with --config=cuda on a GPU machine)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        if variant.name == "ort-cpu-x64quantprecision":
            opts.add_session_config_entry("session.x64quantprecision", "1")
        self._profile_dir = tempfile.mkdtemp(prefix="tinyq_ep_")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(self._profile_dir, "profile")
        try:
            self._sess = ort.InferenceSession(model, opts, providers=[want] + ([ORT_CPU] if want != ORT_CPU else []))
        except Exception as e:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            raise SessionFailed(f"{want} could not create a session: {e}") from None
        self.want = want
        self.placement = Placement(ran_on=list(self._sess.get_providers()))
        self._profiled = False

    def get_inputs(self):
        return self._sess.get_inputs()

    def get_outputs(self):
        return self._sess.get_outputs()

    def run(self, names, feeds):
        out = self._sess.run(names, feeds)
        if not self._profiled:
            self._profiled = True
            self._read_profile()
        return out

    def close(self) -> None:
        """Stops profiling (ORT would write its file when the session dies) and removes the directory."""
        if not self._profiled:
            self._profiled = True
            self._sess.end_profiling()
        shutil.rmtree(self._profile_dir, ignore_errors=True)

    def _read_profile(self) -> None:
        path = self._sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
        counts: Dict[str, int] = {}
        for e in events:
            provider = e.get("args", {}).get("provider")
            if e.get("cat") == "Node" and provider and e.get("name", "").endswith("_kernel_time"):
                counts[provider] = counts.get(provider, 0) + 1
        self.placement.nodes = counts
        if self.placement.ran_on[:1] != [self.want]:
            self.placement.fell_back = True
            self.placement.flags.append(f"requested {self.want}, the session runs on {self.placement.ran_on}")
        elsewhere = {p: n for p, n in counts.items() if p != self.want}
        if elsewhere:
            self.placement.flags.append(f"{sum(elsewhere.values())} nodes ran on {', '.join(elsewhere)}, not {self.want}")


class OpenVinoRunner(_Runner):
    """OpenVINO's own runtime (not the ORT EP) on a device, with its precision read back."""

    def __init__(self, model: str, variant: Variant, device: str):
        try:
            import openvino as ov
        except ImportError as e:
            raise Unavailable(f"openvino is not installed: {e}") from None
        core = ov.Core()
        if device not in core.available_devices:
            raise Unavailable(f"OpenVINO has no device {device} here (devices: {', '.join(core.available_devices) or 'none'})")
        hint = "f16" if variant.name.endswith("-f16") else "f32"
        try:
            self._compiled = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": hint})
        except Exception as e:
            raise SessionFailed(f"OpenVINO could not compile the model for {device}: {e}") from None
        self._inputs = [_Io(p.get_any_name(), [d.get_length() if d.is_static else None for d in p.get_partial_shape()])
                        for p in self._compiled.inputs]
        self._outputs = [_Io(p.get_any_name(), []) for p in self._compiled.outputs]
        precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # e.g. "f32", "bf16"
        nodes: Dict[str, int] = {}
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info and op.get_type_name() == "ExecutionNode":
                p = info["runtimePrecision"].astype(str)
                nodes[p] = nodes.get(p, 0) + 1
        self.placement = Placement(ran_on=[f"OpenVINO {device}"], nodes=nodes, precision=precision)
        if precision != hint:
            self.placement.flags.append(f"requested {hint}; the {device} plugin infers in {precision}")
        self._request = self._compiled.create_infer_request()

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds):
        result = self._request.infer({i.name: feeds[i.name] for i in self._inputs})
        wanted = names or [o.name for o in self._outputs]
        by_name = {o.name: np.asarray(result[p]) for o, p in zip(self._outputs, self._compiled.outputs)}
        return [by_name[n] for n in wanted]


def variants(eps: Sequence[str], openvino_device: str) -> List[Variant]:
    out = []
    for ep in eps:
        for v in VARIANTS[ep]:
            out.append(Variant(v.name.format(device=openvino_device.lower()), v.ep, v.description))
    return out


def runner(model: str, variant: Variant, openvino_device: str, disabled: Sequence[str] = ()):
    """A runner for the variant, or Unavailable with the reason."""
    if variant.ep in disabled:
        raise Unavailable(f"disabled with --disable-ep={variant.ep}")
    if variant.ep == "openvino":
        return OpenVinoRunner(model, variant, openvino_device)
    return OrtRunner(model, variant)
