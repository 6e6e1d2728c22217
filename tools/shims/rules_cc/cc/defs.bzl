"""Forwards @rules_cc//cc:defs.bzl to Bazel 4.2.3's built-in C++ rules.

Bazel >= 7 users get the real rules_cc from MODULE.bazel. @bazel_tools loads the toolchain
and proto names from here too, so they are all forwarded.
"""

cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_proto_library = native.cc_proto_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
objc_library = native.objc_library
