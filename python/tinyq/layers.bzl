"""The tinyq library's layers, and the visibility that makes a wrong-way dependency fail to build.

Each layer is one package, //python/tinyq/<layer>, whose targets are visible only to the layers
above it and to the library's clients (docs/architecture.md). //python/tinyq:layers_test checks
that the Python imports follow the same order, and :wrong_way_tests that a dependency against it
does not build.
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

def layer_files():
    """Every Python file of the layer, tests included, for //python/tinyq:layers_test."""
    native.filegroup(
        name = "py_files",
        srcs = native.glob(["*.py"]),
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

def wrong_way_probe(name, uses):
    """A library that depends on `uses`, which it must not: a target of a higher layer, or a test
    helper. It never builds: tagged manual, so `bazel build //...` skips it, and checked by a
    wrong_way_test in //python/tinyq."""
    native.py_library(
        name = name,
        deps = [uses],
        tags = ["manual"],
        visibility = ["//python/tinyq:__pkg__"],
    )
