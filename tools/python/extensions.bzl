"""bzlmod extension: the same tinyq_venv repository rule WORKSPACE uses, for Bazel >= 7."""

load("//tools/python:venv.bzl", "tinyq_venv")

_lock = tag_class(attrs = {
    "name": attr.string(default = "tinyq_venv"),
    "lock": attr.label(mandatory = True),
})

def _venv_impl(module_ctx):
    for mod in module_ctx.modules:
        for tag in mod.tags.lock:
            tinyq_venv(name = tag.name, lock = tag.lock)

venv = module_extension(
    implementation = _venv_impl,
    tag_classes = {"lock": _lock},
)
