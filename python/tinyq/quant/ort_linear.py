"""onnxruntime's quantize_static, in time linear in the graph's size.

Three steps of onnxruntime.quantization (1.32) scan the whole graph once per node they handle, so
a graph of N nodes costs O(N^2): a chain of 2 000 Relu nodes took 27 s, 5 000 several minutes.

  - MinMaxCalibrater.augment_graph rebuilds a name -> value_info map and searches the node list
    for each tensor it calibrates;
  - BaseQuantizer.adjust_tensor_ranges rebuilds the input -> consumers map for each Relu and Clip;
  - QDQQuantizer.try_replacing_upstream_output (a Relu or Clip folded into its producer) rebuilds
    the same map, and renames the producer's output by visiting every node.

linear_quantize_static() runs quantize_static with those three replaced by versions that build
each map once. They compute the same things: the calibration ranges, and so the artefact, are
byte-identical (//model:int8_pins_test; //python/tinyq/quant:quantize_test compares both paths).
The calibration nodes are appended at the end of the augmented graph instead of before their
first consumer; both orders are topological, and that graph is only run to read the ranges.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Dict, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _augment_graph(self) -> None:
    """MinMaxCalibrater.augment_graph: a ReduceMin and a ReduceMax (each reshaped to 1-D) per
    tensor to calibrate, as graph outputs; the same nodes and outputs, built in one pass."""
    tensors, _ = self.select_tensors_to_calibrate(self.model)
    graph = self.model.graph
    reshape_shape_name = str(uuid.uuid4())
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), reshape_shape_name))
    value_infos = {vi.name: vi for vi in graph.value_info}
    value_infos.update({o.name: o for o in graph.output})
    value_infos.update({i.name: i for i in graph.input})
    nodes, outputs = [], []
    for tensor in tensors:
        if tensor not in value_infos:
            raise ValueError(f"Unable to guess tensor type for tensor {tensor!r}, "
                             "running shape inference before quantization may resolve this issue.")
        for op in ("ReduceMin", "ReduceMax"):
            reduce_output = f"{tensor}_{op}"
            intermediate = reduce_output + "_Reshape"
            reduce = helper.make_node(op, [tensor], [intermediate], keepdims=1, name=reduce_output)
            if self.per_channel:
                _reduce_all_but_channel(self.model, reduce, value_infos[tensor])
            nodes += [reduce, helper.make_node("Reshape", [intermediate, reshape_shape_name], [reduce_output],
                                               name=intermediate)]
            outputs.append(helper.make_tensor_value_info(reduce_output, value_infos[tensor].type.tensor_type.elem_type,
                                                         [None]))
    graph.node.extend(nodes)
    graph.output.extend(outputs)
    onnx.save(self.model, self.augmented_model_path, save_as_external_data=self.use_external_data_format)


def _reduce_all_but_channel(model: onnx.ModelProto, reduce: onnx.NodeProto, value_info: onnx.ValueInfoProto) -> None:
    """Per channel: reduce over every axis but 1, as an attribute before opset 18, an input from it."""
    axes = [0, *range(2, len(value_info.type.tensor_type.shape.dim))]
    version = next((o.version for o in model.opset_import if onnx.defs.has(reduce.op_type, o.domain)), None)
    if version is None:
        raise RuntimeError(f"Model does not contain a version for '{reduce.op_type}'.")
    if version < 18:
        reduce.attribute.append(helper.make_attribute("axes", axes))
    else:
        name = str(uuid.uuid4())
        reduce.input.append(name)
        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), name))


def _consumer_counts(graph: onnx.GraphProto) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _adjust_tensor_ranges(self) -> None:
    """BaseQuantizer.adjust_tensor_ranges: a Relu or Clip that is its input's only consumer gives
    that input its own range; a Softmax's output is [0, 1]. The loop changes no node, so the
    consumers are counted once."""
    from onnxruntime.quantization.calibrate import TensorData

    if self.tensors_range is None:
        return
    consumers = _consumer_counts(self.model.model.graph)
    for node in self.model.nodes():
        if node.op_type in ("Clip", "Relu"):
            if not self.should_quantize_node(node) or consumers.get(node.input[0], 0) != 1:
                continue
            if node.input[0] not in self.tensors_range or node.output[0] not in self.tensors_range:
                continue
            td = self.tensors_range[node.output[0]]
            if not isinstance(td, TensorData):
                raise TypeError(f"Unexpected type {type(td)} for {node.output[0]!r}.")
            self.tensors_range[node.input[0]] = td
        elif node.op_type == "Softmax" and self.should_quantize_node(node):
            self.tensors_range[node.output[0]] = TensorData(lowest=np.float32(0.0), highest=np.float32(1.0))


class _GraphIndex:
    """Consumer counts and producers of one graph, valid while its node, input and output lists keep
    their lengths; producers are checked again before each use (else the slow path runs)."""

    def __init__(self, graph: onnx.GraphProto):
        self.key = self.key_of(graph)
        self.consumers = _consumer_counts(graph)
        self.producers: Dict[str, list] = {}  # a folded Relu still writes its output until it is removed: a list
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}

    @staticmethod
    def key_of(graph: onnx.GraphProto):
        return id(graph), len(graph.node), len(graph.input), len(graph.output)


def _index(quantizer) -> _GraphIndex:
    graph = quantizer.model.model.graph
    index = getattr(quantizer, "_tinyq_graph_index", None)
    if index is None or index.key != _GraphIndex.key_of(graph):
        index = quantizer._tinyq_graph_index = _GraphIndex(graph)
    return index


def _try_replacing_upstream_output(self, upstream_output_name: str, output_name: str) -> bool:
    """QDQQuantizer.try_replacing_upstream_output: folds a Relu or Clip into the node producing its
    input (which then writes the activation's output directly), when it is that input's only
    consumer and the input is neither a graph input nor output."""
    params = self.quantization_params
    if not (output_name in params and params[output_name].converted is None
            and params[upstream_output_name].converted is None):
        return False
    index = _index(self)
    if (index.consumers.get(upstream_output_name, 0) != 1 or upstream_output_name in index.outputs
            or upstream_output_name in index.inputs):
        return False
    producers = index.producers.pop(upstream_output_name, [])
    if producers and all(upstream_output_name in node.output for node in producers):
        for node in producers:  # every node writing it, as replace_output_of_all_nodes renames
            for j, name in enumerate(node.output):
                if name == upstream_output_name:
                    node.output[j] = output_name
        index.producers.setdefault(output_name, []).extend(producers)
    else:
        self.model.replace_output_of_all_nodes(upstream_output_name, output_name)
        self._tinyq_graph_index = None  # rebuilt on the next call
    if upstream_output_name in self.tensors_to_quantize:
        del self.tensors_to_quantize[upstream_output_name]
    return True


@contextlib.contextmanager
def linear_steps() -> Iterator[None]:
    """While it is open, onnxruntime's quantize_static takes the linear steps above."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    patches = [(MinMaxCalibrater, "augment_graph", _augment_graph),
               (QDQQuantizer, "adjust_tensor_ranges", _adjust_tensor_ranges),
               (QDQQuantizer, "try_replacing_upstream_output", _try_replacing_upstream_output)]
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in patches]
    try:
        for cls, name, fn in patches:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, old in saved:
            if old is None:
                delattr(cls, name)
            else:
                setattr(cls, name, old)
