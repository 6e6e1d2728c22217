"""Draws the tinyq library's layers from the BUILD graph: reads `bazel query --output=graph` on
stdin, collapses targets to their packages, keeps the transitive reduction of the edges (an edge
implied by two others goes) and writes graphviz dot on stdout, one rank per layer.

  tools/architecture/draw.sh   # regenerates docs/architecture.dot and docs/architecture.png
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("app", "zoo", "search", "judge", "quant", "registry", "model", "io")  # top to bottom
EDGE = re.compile(r'^\s*"(//[^":]*):[^"]*"\s*->\s*"(//[^":]*):[^"]*"')


def node(package: str) -> str:
    """A package's node name: the layer, "tools" for //python, "testing" for the test helpers."""
    return {"//python": "tools", "//python/tinyq_testing": "testing"}.get(package, package.rsplit("/", 1)[-1])


def label(name: str) -> str:
    """The node's label: its name and the modules it holds."""
    folder = {"tools": ROOT / "python", "testing": ROOT / "python/tinyq_testing"}.get(name, ROOT / "python/tinyq" / name)
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__" and not p.stem.endswith("_test"))
    if name == "tools":
        return "tools\\n//python:<tool>, one py_binary each"
    rows = [", ".join(modules[i:i + 4]) for i in range(0, len(modules), 4)]
    return "\\n".join([f"tinyq.{name}" if name in LAYERS else "tinyq_testing (testonly)", *rows])


def edges(query_output: str):
    """The package-to-package dependencies, without self-edges or the root package."""
    found = set()
    for line in query_output.splitlines():
        m = EDGE.match(line)
        if not m:
            continue
        src, dst = m.groups()
        wanted = ("//python", "//python/tinyq_testing") + tuple(f"//python/tinyq/{layer}" for layer in LAYERS)
        if src in wanted and dst in wanted and src != dst:
            found.add((node(src), node(dst)))
    return sorted(found)


def reduced(found):
    """The transitive reduction: an edge a -> c goes when a reaches c through another node."""
    out = {}
    for a, b in found:
        out.setdefault(a, set()).add(b)

    def reaches(src, dst, skip):
        seen, todo = set(), [n for n in out.get(src, ()) if (src, n) != skip]
        while todo:
            n = todo.pop()
            if n == dst:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(out.get(n, ()))
        return False

    return [(a, b) for a, b in found if not reaches(a, b, (a, b))]


def main() -> None:
    found = reduced(edges(sys.stdin.read()))
    names = ["tools", "testing", *LAYERS]
    out = ["digraph tinyq {", '  rankdir=TB; node [shape=box, fontname="Helvetica", fontsize=11];',
           '  edge [color="#555555"];']
    for n in names:
        style = ', style="rounded,filled", fillcolor="#eef3fb"' if n in LAYERS else ', style="dashed"'
        out.append(f'  "{n}" [label="{label(n)}"{style}];')
    out.append('  { rank=same; "tools"; "testing"; }')
    # One rank per layer, top to bottom, whatever the edges between them.
    out += [f'  "{a}" -> "{b}" [style=invis];' for a, b in zip(("tools",) + LAYERS, LAYERS)]
    out += [f'  "{a}" -> "{b}";' for a, b in found]
    out.append("}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
