"""The tinyq library's layers, and the visibility that makes a wrong-way dependency fail to build.

Each layer is one package, //python/tinyq/<layer>, whose targets are visible only to the layers
above it and to the library's clients (docs/architecture.md). //python/tinyq:layers_test checks
that the Python imports follow the same order, and its <layer>_cannot_use_<above>_test targets
that a dependency against it does not build.
"""

load("@bazel_skylib//lib:unittest.bzl", "analysistest", "asserts")

# Bottom to top: each layer may use only the layers listed before it.
LAYERS = ["io", "model", "registry", "quant", "judge", "search", "zoo", "app"]

# Packages outside the library that may use every layer: the tools, the test helpers, the zoo's
# build (genrules, pins and gate tests) and the cross-cutting tests.
CLIENTS = ["//python", "//python/tinyq_testing", "//model/...", "//tests/..."]

def layer_groups():
    """One package_group per layer, users_of_<layer>: the packages that may depend on it."""
    for i, layer in enumerate(LAYERS):
        native.package_group(
            name = "users_of_" + layer,
            packages = ["//python/tinyq/" + above for above in LAYERS[i + 1:]] + CLIENTS,
        )

def layer_visibility(layer):
    """The default_visibility of a layer's package."""
    if layer not in LAYERS:
        fail("unknown layer %r; the layers are %s" % (layer, LAYERS))
    return ["//python/tinyq:users_of_" + layer]

def layer_checks(must_not_use):
    """What every layer's package declares besides its libraries: py_files, its Python files
    (tests included) for //python/tinyq:layers_test, and wrong_way_probe, a library that depends on
    `must_not_use` (a target of the layer above, or a test helper). The probe never builds: tagged
    manual, so `bazel build //...` skips it, and checked by a wrong_way_test in //python/tinyq."""
    native.filegroup(
        name = "py_files",
        srcs = native.glob(["*.py"]),
        visibility = ["//python/tinyq:__pkg__"],
    )
    native.py_library(
        name = "wrong_way_probe",
        deps = [must_not_use],
        tags = ["manual"],
        visibility = ["//python/tinyq:__pkg__"],
    )

def _wrong_way_impl(ctx):
    env = analysistest.begin(ctx)
    asserts.expect_failure(env, ctx.attr.error)
    return analysistest.end(env)

# Passes only when its target fails analysis with `error` (default: a visibility error).
wrong_way_test = analysistest.make(
    _wrong_way_impl,
    expect_failure = True,
    attrs = {"error": attr.string(default = "is not visible from target")},
)
