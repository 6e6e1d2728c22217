"""tinyq_library: a py_library of one layer of the tinyq package, with its __init__.py and the root."""

load("@rules_python//python:defs.bzl", "py_library")

def tinyq_library(name, srcs = [], deps = [], **kwargs):
    py_library(
        name = name,
        srcs = srcs + (["__init__.py"] if srcs else []),
        deps = deps + ["//python/tinyq"],
        **kwargs
    )
