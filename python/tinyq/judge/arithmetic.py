"""The two int8 arithmetics x86 CPUs compute, and running a model in either of them on any machine.

onnxruntime's CPU kernels for uint8 activations times int8 weights (QLinearConv, QGemm,
QLinearMatMul, MatMulInteger, ConvInteger, DynamicQuantizeMatMul, and the QDQ groups fused into
them) multiply along the reduction axis K in one of two ways (MLAS, onnxruntime/core/mlas/lib):
  - "exact": every product accumulated in int32. AVX-512 VNNI and AVX-VNNI (vpdpbusd), AMX,
    SSE4.1 (pmaddwd on widened bytes), arm64 (sdot/udot, or widening multiplies without them), and
    any x86 CPU given the session option session.x64quantprecision=1 (onnxruntime then turns the
    weights into uint8 and runs the U8U8 kernels, which widen to int16 before multiplying).
  - "avx2": vpmaddubsw adds each adjacent pair of u8 x s8 products along K into int16 with signed
    saturation before vpmaddwd widens to int32. AVX2, and AVX-512 without VNNI
    (MlasGemmU8S8KernelAvx2, ...Avx512Core, MlasConvSymKernelAvx2). A pair whose true sum lies
    outside [-32768, 32767] is clipped.

A model runs natively in this CPU's own arithmetic; in "exact" on an AVX2 machine through the
session option; and in "avx2" on any other x86-64 machine under qemu-user emulating a Haswell
(qemu-x86_64 -cpu Haswell-v4: AVX2, FMA, no AVX-512, no VNNI), which runs onnxruntime's own
AVX2 kernels instruction for instruction. Emulation is about 100x slower, so it runs on a seeded
subset of EMULATED_SAMPLES samples.

The pair bound (pair_bounds) and its fix (fix_overflow) live in tinyq.quant.overflow.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ARITHMETICS = ("exact", "avx2")
EMULATED_CPU = "Haswell-v4"
EMULATED_SAMPLES = 256
EMULATION_SEED = 0
EMULATION_TIMEOUT_S = 1800
PRECISION_OPTION = "session.x64quantprecision"
_EXACT_X86 = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86_MACHINES = ("x86_64", "AMD64")


class ArithmeticUnavailable(Exception):
    """This machine cannot compute the asked arithmetic (no qemu-x86_64, or not an x86-64 host)."""


@dataclass(frozen=True)
class Cpu:
    model: str
    machine: str  # platform.machine(): x86_64, aarch64, ...
    flags: frozenset

    @property
    def int8_isa(self) -> str:
        """The instruction set onnxruntime's u8 x s8 kernels use on this CPU."""
        if self.machine not in _X86_MACHINES:
            return self.machine
        for flag in ("amx_int8", "avx512_vnni", "avx_vnni"):
            if flag in self.flags:
                return flag
        if "avx512bw" in self.flags:
            return "avx512bw (no VNNI)"
        return "avx2 (no VNNI)" if "avx2" in self.flags else "sse4.1"

    @property
    def native(self) -> str:
        """The arithmetic this CPU computes without a session option."""
        if self.machine not in _X86_MACHINES or any(f in self.flags for f in _EXACT_X86):
            return "exact"
        return "avx2" if "avx2" in self.flags else "exact"

    def as_dict(self) -> Dict[str, str]:
        return {"model": self.model, "machine": self.machine, "int8_isa": self.int8_isa, "arithmetic": self.native}


# Flags numpy reads from CPUID itself (numpy._core's __cpu_features__), by their /proc/cpuinfo names.
_CPUID_FLAGS = {"SSE41": "sse4_1", "AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VNNI": "avx512_vnni"}


def cpuid_flags() -> Optional[frozenset]:
    """The _CPUID_FLAGS this process's CPU reports through CPUID (None off x86, or without numpy's
    table). Under qemu-user this is the emulated CPU, while /proc/cpuinfo still shows the host's."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        return None
    if platform.machine() not in _X86_MACHINES:
        return None
    return frozenset(name for key, name in _CPUID_FLAGS.items() if features.get(key))


def host_cpu(cpuinfo: str = "/proc/cpuinfo", cpuid: Optional[frozenset] = frozenset({"auto"})) -> Cpu:
    """This machine's CPU: its model from the first processor block of /proc/cpuinfo, its flags from
    there unless CPUID disagrees on a flag both know (an emulated CPU), then from CPUID alone."""
    model, flags = platform.processor() or "unknown", set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and model in ("unknown", platform.processor()):
            model = value.strip() or model
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    cpuid = cpuid_flags() if cpuid == frozenset({"auto"}) else cpuid
    if cpuid is not None and flags & set(_CPUID_FLAGS.values()) != cpuid:
        model, flags = f"{model} (as CPUID reports it: not the CPU /proc/cpuinfo describes)", set(cpuid)
    return Cpu(model, platform.machine(), frozenset(flags))


def how(arithmetic: str, cpu: Optional[Cpu] = None, integer: bool = True) -> str:
    """How this machine computes the arithmetic: "native", "session option" or "emulated".
    integer=False (a graph with no u8 x s8 kernel, tinyq.quant.overflow.pair_bounds empty): exact is
    native everywhere, and the session option is never set. On AVX2 onnxruntime's option rewrites
    per-channel weight-only DequantizeLinear nodes into a graph that fails to run."""
    cpu = cpu or host_cpu()
    if arithmetic == cpu.native or (arithmetic == "exact" and not integer):
        return "native"
    return "session option" if arithmetic == "exact" else "emulated"


def describe(arithmetic: str, cpu: Optional[Cpu] = None, samples: Optional[int] = None, of: Optional[int] = None,
             integer: bool = True) -> str:
    cpu = cpu or host_cpu()
    way = how(arithmetic, cpu, integer)
    if way == "native":
        one = "" if arithmetic == cpu.native else "; no u8 x s8 kernel in the graph, so both arithmetics are one computation"
        return f"native ({cpu.int8_isa}, {cpu.model}{one})"
    if way == "session option":
        return f"session option {PRECISION_OPTION}=1 on {cpu.int8_isa} ({cpu.model})"
    subset = "" if samples is None or samples == of else f", {samples} of {of} samples (seed {EMULATION_SEED})"
    return f"emulated: qemu-x86_64 -cpu {EMULATED_CPU} (AVX2, no VNNI){subset}"


def session_config(arithmetic: str, cpu: Optional[Cpu] = None, integer: bool = True) -> Dict[str, str]:
    """The session options that make this machine compute the arithmetic natively; raises
    ArithmeticUnavailable where only emulation can (see run)."""
    cpu = cpu or host_cpu()
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; one of {ARITHMETICS}")
    way = how(arithmetic, cpu, integer)
    if way == "emulated":
        raise ArithmeticUnavailable(f"this CPU ({cpu.int8_isa}) computes {arithmetic!r} only under emulation")
    return {PRECISION_OPTION: "1"} if way == "session option" else {}


def has_integer_kernel(model) -> bool:
    """Whether onnxruntime runs any layer of the model (bytes or a path) on a u8 x s8 kernel."""
    import onnx

    from tinyq.model import calibration
    from tinyq.quant import overflow

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else calibration.read_model(model)
    return bool(overflow.pair_bounds(proto))


def subset(n: int, size: int = EMULATED_SAMPLES) -> np.ndarray:
    """The sorted sample indices emulation runs on: all of them up to `size`, else a seeded draw."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(EMULATION_SEED).choice(n, size, replace=False))


def qemu() -> str:
    """The qemu-x86_64 binary (Debian's qemu-user, which tools/bazel installs)."""
    found = shutil.which("qemu-x86_64") or ("/usr/bin/qemu-x86_64" if os.access("/usr/bin/qemu-x86_64", os.X_OK) else None)
    if platform.machine() not in _X86_MACHINES:
        raise ArithmeticUnavailable(f"the avx2 arithmetic is emulated only on x86-64 hosts (this is {platform.machine()})")
    if not found:
        raise ArithmeticUnavailable("qemu-x86_64 is not installed: `apt-get install qemu-user` (tools/bazel installs it)")
    return found


def run(model, feeds: Dict[str, np.ndarray], arithmetic: str, cpu: Optional[Cpu] = None,
        integer: Optional[bool] = None) -> List[np.ndarray]:
    """Every tensor output over every sample of feeds (tinyq.model.runner.run_all), as `arithmetic`
    computes it: natively, through the session option, or under qemu-user. model: bytes, or a
    path (external data beside it is read from there); integer: has_integer_kernel(model), when
    the caller already knows it."""
    from tinyq.model import runner

    cpu = cpu or host_cpu()
    integer = has_integer_kernel(model) if integer is None else integer
    if how(arithmetic, cpu, integer) != "emulated":
        return runner.run_all(runner.session(model, config=session_config(arithmetic, cpu, integer)), feeds)
    return _run_emulated(model, feeds)


def _run_emulated(model, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    binary = qemu()
    with tempfile.TemporaryDirectory(prefix="tinyq_emulate_") as tmp:
        paths = [Path(tmp) / n for n in ("model.onnx", "feeds.npz", "out.npz")]
        if isinstance(model, bytes):
            paths[0].write_bytes(model)
        else:
            paths[0] = Path(model).resolve()
        np.savez(paths[1], **feeds)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
        cmd = [binary, "-cpu", EMULATED_CPU, sys.executable, "-m", "tinyq.judge.arithmetic", *map(str, paths)]
        try:
            done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=EMULATION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ArithmeticUnavailable(f"emulation ran past {EMULATION_TIMEOUT_S} s") from None
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if "TCG doesn't support" not in ln]
            raise ArithmeticUnavailable(f"emulated run failed (exit {done.returncode}): {' / '.join(lines[-3:])}")
        with np.load(paths[2]) as out:
            return [out[f"o{i}"] for i in range(len(out.files))]


def _emulated_worker(model: str, feeds: str, out: str) -> None:
    """Runs inside qemu: checks the emulated CPU is the one asked for, then runs the model."""
    from numpy._core._multiarray_umath import __cpu_features__ as features

    from tinyq.model import runner

    if not features.get("AVX2") or features.get("AVX512VNNI") or features.get("AVX512F"):
        sys.exit(f"emulated CPU is not AVX2 without AVX-512/VNNI: {sorted(k for k, v in features.items() if v)}")
    with np.load(feeds) as f:
        arrays = {k: f[k] for k in f.files}
    outputs = runner.run_all(runner.session(model), arrays)
    np.savez(out, **{f"o{i}": o for i, o in enumerate(outputs)})


if __name__ == "__main__":
    _emulated_worker(*sys.argv[1:4])
