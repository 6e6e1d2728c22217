"""Macros that expand the zoo's model list into per-model targets."""

load("@rules_python//python:defs.bzl", "py_binary")

def train_targets(model_ids, src, deps, data = []):
    """One `bazel run //python:train_<id>` target per zoo model, all over the same tool.

    Args:
      model_ids: the zoo's model ids.
      src: the training tool's main file.
      deps: its py_library deps.
      data: runtime data.
    """
    for model_id in model_ids:
        py_binary(
            name = "train_" + model_id,
            srcs = [src],
            main = src,
            args = ["--model=" + model_id],
            data = data,
            deps = deps,
        )
