"""Macros that expand the zoo's model list into per-model targets."""

load("@rules_python//python:defs.bzl", "py_binary", "py_test")

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

def int8_artefacts(recipes):
    """One genrule //model:<id>_int8 per quantised model, and //model:all_int8 collecting them.

    Each runs the model's quantiser on the fp32 file (and, for static, its calibration set) and
    writes int8/<id>.int8.onnx. QAT artefacts are trained outside the build and committed, so
    they get no genrule; //model:int8_pins_test checks them like the others.

    Args:
      recipes: {model_id: {"mode": "dynamic" | "static" | "qat", "args": [tool flags]}}.
    """
    built = []
    for model_id, recipe in recipes.items():
        mode = recipe["mode"]
        if mode == "qat":
            continue
        src = "tiny/%s.onnx" % model_id
        srcs = [src]
        if mode == "static":
            calibration = "tiny/calibration/%s.npz" % model_id
            srcs.append(calibration)
            tool = "//python:ptq_static"
            extra = ["--calibration=$(location %s)" % calibration]
        elif mode == "dynamic":
            tool = "//python:ptq_dynamic"
            extra = []
        else:
            fail("%s: unknown quant mode %r in the recipe" % (model_id, mode))
        native.genrule(
            name = model_id + "_int8",
            srcs = srcs,
            outs = ["int8/%s.int8.onnx" % model_id],
            tools = [tool],
            cmd = " ".join(["$(location %s) $(location %s) --output=$@" % (tool, src)] + extra + recipe["args"]),
            message = "Quantising %s (%s)" % (model_id, mode),
        )
        built.append(":%s_int8" % model_id)
    native.filegroup(
        name = "all_int8",
        srcs = built,
    )

def gate_tests(recipes):
    """One test //model:<id>_gate_test per quantised model: the accuracy gate on the built artefact.

    Each depends on the fp32 model, its int8 artefact (the genrule's output, or the committed
    file for QAT), the soak fixture and the gate's code, so Bazel re-runs a gate only when one
    of them changes.

    Args:
      recipes: the same dict int8_artefacts() takes.
    """
    for model_id, recipe in recipes.items():
        int8 = ":%s_int8" % model_id if recipe["mode"] != "qat" else "tiny/%s.int8.onnx" % model_id
        py_test(
            name = model_id + "_gate_test",
            srcs = ["//python:measure_quant_drop.py"],
            main = "//python:measure_quant_drop.py",
            args = [
                "--id=" + model_id,
                "--int8=$(rootpath %s)" % int8,
                "--nolatency",
            ],
            data = [
                int8,
                ":registry",
            ],
            deps = ["//python:measure_quant_drop_lib"],
            python_version = "PY3",
            # medium: the avx2 row runs under qemu-user on CPUs that compute int8 exactly.
            size = "medium",
        )
