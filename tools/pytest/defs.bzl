"""py_pytest_test: a py_test whose sources are run by pytest."""

load("@rules_python//python:defs.bzl", "py_test")

def py_pytest_test(name, srcs, deps = [], args = [], size = "small", **kwargs):
    """One Bazel test target running pytest over srcs.

    Args:
      name: target name; by convention <module>_test.
      srcs: the test files.
      deps: py_library deps.
      args: extra pytest arguments.
      size: Bazel test size; most tinyq tests are small.
      **kwargs: passed to py_test (data, size, tags, ...).
    """
    py_test(
        name = name,
        srcs = srcs + ["//tools/pytest:pytest_main.py"],
        main = "//tools/pytest:pytest_main.py",
        args = ["$(rootpath %s)" % s for s in srcs] + args,
        python_version = "PY3",
        srcs_version = "PY3",
        deps = deps,
        size = size,
        **kwargs
    )
