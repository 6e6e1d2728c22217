#!/usr/bin/env bash
# Regenerates docs/architecture.dot and docs/architecture.png from the BUILD graph: the
# dependencies among every py_library and py_binary of //python/... (the manual wrong-way probes
# left out), collapsed to packages (one node per layer of the tinyq library), drawn by graphviz's dot.
#   tools/architecture/draw.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v dot >/dev/null; then
  echo "tools/architecture/draw.sh: needs graphviz's dot (Debian: apt-get install graphviz)" >&2
  exit 2
fi
tools/bazel query --noshow_progress --nograph:factored --output=graph \
  'kind("py_(library|binary) rule", //python/...) except attr(tags, manual, //python/...)' \
  | python3 tools/architecture/draw.py > docs/architecture.dot
dot -Tpng -Gdpi=110 docs/architecture.dot -o docs/architecture.png
echo "tools/architecture/draw.sh: wrote docs/architecture.dot and docs/architecture.png"
