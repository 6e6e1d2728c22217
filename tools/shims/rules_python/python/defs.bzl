"""Forwards @rules_python//python:defs.bzl to Bazel 4.2.3's built-in Python rules.

Bazel >= 7 users get the real rules_python from MODULE.bazel; the names here are the same.
"""

load("@bazel_tools//tools/python:toolchain.bzl", _py_runtime_pair = "py_runtime_pair")

py_binary = native.py_binary
py_library = native.py_library
py_test = native.py_test
py_runtime = native.py_runtime
py_runtime_pair = _py_runtime_pair
