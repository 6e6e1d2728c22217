"""Compaction: the same computation in fewer bytes, and nothing of the exporter's environment.

compact() strips doc strings, metadata_props everywhere (torch's stack traces with local paths),
node names and long tensor names, and puts the nodes in topological order. It never shares an
initialiser between nodes: onnxruntime's x64quantprecision transformer rewrites int8 kernels'
initialisers in place and fails on shared ones.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Dict, Iterator, List

import onnx

from tinyq.model import weights


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Puts the graph's nodes in topological order, in place, counting the outer names an If/Loop/Scan
    body reads as its node's inputs. onnxruntime's quantize_dynamic and quantize_static move such a
    node ahead of what its body reads (onnxruntime sorts on load; onnx's checker refuses). A cycle
    leaves the order as is."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = []
    for i, node in enumerate(nodes):
        reads = set(node.input)
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                reads.update(name for sub in (g, *(sg for _, sg in weights.subgraphs(g))) for n in sub.node for name in n.input)
        deps.append({producer[r] for r in reads if r in producer and producer[r] != i})
    waiting = [len(d) for d in deps]
    users: Dict[int, List[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # Kahn's, lowest index first: a sorted graph keeps its order
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        return
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _strip_graph(graph: onnx.GraphProto) -> None:
    """Doc strings and metadata_props off the graph, its nodes, tensors and values; subgraphs too.

    Fields compaction has always emptied (model, graph, node, graph input and output doc strings)
    are set to "", the rest cleared, so the zoo's pinned artefacts keep their bytes."""
    graph.doc_string = ""
    graph.ClearField("metadata_props")
    for v in (*graph.input, *graph.output):
        v.doc_string = ""
        v.ClearField("metadata_props")
    for v in graph.value_info:
        v.ClearField("doc_string")
        v.ClearField("metadata_props")
    for t in graph.initializer:
        t.ClearField("doc_string")
        t.ClearField("metadata_props")
    for node in graph.node:
        node.doc_string = ""
        node.ClearField("metadata_props")
        for a in node.attribute:
            a.ClearField("doc_string")
            for g in (a.g,) if a.HasField("g") else a.graphs:
                _strip_graph(g)


def strip_metadata(model: onnx.ModelProto) -> None:
    """Removes, in place, everything that describes the exporter's run rather than the computation:
    doc strings, metadata_props (torch's dynamo exporter writes stack traces with local source paths
    and line numbers into node metadata_props), producer_version."""
    model.doc_string = ""
    model.producer_version = ""
    model.ClearField("metadata_props")
    _strip_graph(model.graph)
    for f in model.functions:
        f.ClearField("doc_string")
        f.ClearField("metadata_props")
        for node in f.node:
            node.ClearField("doc_string")
            node.ClearField("metadata_props")


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name one graph (not its subgraphs) declares or reads."""
    for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        yield v.name
    for node in graph.node:
        yield from node.input
        yield from node.output


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation in fewer bytes, and nothing of the exporter's environment: no doc
    strings, metadata or node names, short tensor names.

    Initialisers are never shared between nodes, not even identical scales and zero points:
    onnxruntime's x64quantprecision transformer rewrites an int8 kernel's initialisers in place and
    fails on shared ones ("Attempt to replace the existing tensor").
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    strip_metadata(model)
    graph = model.graph
    del graph.value_info[:]
    _sort_nodes(graph)

    # Short names for everything that is not a graph input or output, nor named inside a subgraph
    # (an If/Loop/Scan body reads outer names by name, and its own names must stay unique).
    io_names = {v.name for v in (*graph.input, *graph.output)}
    io_names |= {name for _, g in weights.subgraphs(graph) for name in _names(g)}
    rename: Dict[str, str] = {}
    # Hex names in order, skipping any a graph input or output already has ("a", "1f", ...).
    fresh = (format(k, "x") for k in itertools.count() if format(k, "x") not in io_names)

    def short(name: str) -> str:
        if not name or name in io_names:
            return name
        if name not in rename:
            rename[name] = next(fresh)
        return rename[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    onnx.checker.check_model(model)
    return model
