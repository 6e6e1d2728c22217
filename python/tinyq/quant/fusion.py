"""Fusion: the compute ops of a static QDQ model that still run as DequantizeLinear -> fp32 op ->
QuantizeLinear in onnxruntime's optimised graph, instead of as an int8 kernel."""

from __future__ import annotations

from typing import Dict, List

import onnx

from tinyq.quant import quantize, rewrites

# The ops with int8 kernels in onnxruntime's CPU provider (quantize.STATIC_OP_TYPES), less Relu
# and Clip, which fuse into the kernel before them.
COMPUTE_OPS = tuple(op for op in quantize.STATIC_OP_TYPES if op not in ("Relu", "Clip"))


def fusion(int8: bytes) -> List[str]:
    """Compute ops that still run as DequantizeLinear -> fp32 op -> QuantizeLinear in onnxruntime's
    optimised graph (extended level: stable across machines). Empty: every op between quantised
    tensors runs as an int8 kernel. An fp32 region's edges (fed by DequantizeLinear, or feeding
    QuantizeLinear, not both) are fp32 on purpose and not counted."""
    return unfused_ops(rewrites.optimised(int8))


def unfused_ops(optimised: onnx.ModelProto) -> List[str]:
    """fusion() on a graph onnxruntime already optimised (tinyq.quant.rewrites.optimised)."""
    made_by = {o: n.op_type for n in optimised.graph.node for o in n.output}
    read_by: Dict[str, List[str]] = {}
    for n in optimised.graph.node:
        for i in n.input:
            read_by.setdefault(i, []).append(n.op_type)
    return [n.op_type for n in optimised.graph.node
            if _fp32_compute(n.op_type) and any(made_by.get(i) == "DequantizeLinear" for i in n.input)
            and any(op == "QuantizeLinear" for o in n.output for op in read_by.get(o, []))]


def _fp32_compute(op: str) -> bool:
    """A compute op running in fp32, as onnxruntime's optimiser names it (Conv, FusedConv, NhwcFusedConv, ...)."""
    return op in COMPUTE_OPS or op in ("ConvTranspose", "Softmax", "Resize") or op.startswith(("Fused", "Nhwc"))
