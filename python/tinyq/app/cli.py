"""What every tinyq command-line tool shares: exit codes, flag parsing, --help, path resolution,
and the guard that keeps a tool from writing over its own inputs or a registry's fp32 models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

from absl import app, flags

from tinyq.io import transaction
from tinyq.io.errors import (  # noqa: F401  (re-exported: tools use cli.EXIT_* and cli.UsageError)
    EXIT_BUSY, EXIT_FAIL, EXIT_INTERNAL, EXIT_NOT_JUDGED, EXIT_OK, EXIT_TOO_LARGE, EXIT_UNSAFE_OUTPUT, EXIT_USAGE,
    EXIT_WRITE_FAILED, Busy, TooLarge, UnsafeOutput, UsageError, WriteFailed)


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _print_help(argv: List[str]) -> None:
    """The tool's docstring and its own flags (every flag with --helpfull), on stdout."""
    main = sys.modules.get("__main__")
    doc = (getattr(main, "__doc__", None) or "").strip()
    full = "--helpfull" in argv
    text = flags.FLAGS.get_help() if full else flags.FLAGS.main_module_help()
    lines = [doc + "\n"] if doc else []
    lines.append("Flags:\n" + text if text.strip() else "This tool has no flags of its own.")
    if not full:
        lines.append("\nPass --helpfull for every flag, absl's included.")
    try:
        print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `tool --help | head`
        pass


def _parse_flags(argv: List[str]) -> List[str]:
    args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    if any(a in HELP_FLAGS for a in args):
        _print_help(args)
        sys.exit(EXIT_OK)  # absl's own --help exits 1
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        prog = os.path.basename(argv[0]) if argv else "tinyq"
        sys.stderr.write(f"{prog}: {e}\nPass --help for usage.\n")
        sys.exit(EXIT_USAGE)


def finite(*holders) -> None:
    """Refuses NaN and infinity for these float flags at parsing (exit 2): absl's bounds checks let
    NaN through, since every comparison with it is false."""
    import math

    for holder in holders:
        flags.register_validator(holder, lambda v: v is None or math.isfinite(v),
                                 message="must be a finite number (not nan or inf)")


def run(main: Callable[[List[str]], int]) -> None:
    """absl's app.run, with flag errors and UsageError mapped to exit code 2."""

    def _main(argv: List[str]) -> int:
        prog = os.path.basename(argv[0]) if argv else "tinyq"
        try:
            return main(argv)
        except UsageError as e:
            sys.stderr.write(f"{prog}: error: {_printable(str(e))}\n")
            return e.exit_code
        except Exception as e:  # the safety net: every known case has its own check and message
            if os.environ.get("TINYQ_DEBUG"):
                raise
            sys.stderr.write(f"{prog}: internal error: {type(e).__name__}: {_printable(str(e))}; this is a tinyq bug: "
                             f"please report it with the command (TINYQ_DEBUG=1 shows the traceback)\n")
            return EXIT_INTERNAL

    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as escapes, never a traceback
        stream.reconfigure(errors="backslashreplace")
    app.run(_main, flags_parser=_parse_flags)


def _printable(text: str) -> str:
    """text safe for any terminal encoding: undecodable file-name bytes (surrogates) as \\x escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def caller_dir() -> Path:
    """Where the user ran the command: BUILD_WORKING_DIRECTORY under `bazel run`, else the cwd."""
    return Path(os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd())


def workspace_dir() -> Path:
    """The source tree root: BUILD_WORKSPACE_DIRECTORY under `bazel run`, else the cwd.

    Under `bazel test` the cwd is the runfiles root, which mirrors the workspace layout.
    """
    return Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd())


def resolve_user_path(path: str) -> Path:
    """A path given on the command line, resolved against the caller's directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else caller_dir() / p


def path_or_default(flag_value: str, default: Path) -> Path:
    """A path flag resolved against the caller's directory, or `default` inside the workspace."""
    return resolve_user_path(flag_value) if flag_value else workspace_dir() / default


def load_valid_registry(path: Path, read_held_out: bool = True):
    """The validated registry, or a UsageError listing every finding (tools need a valid one).
    read_held_out=False: the soak fixtures are checked for existence only, never opened."""
    from tinyq.registry import registry

    try:
        return registry.load(path, read_held_out)
    except (registry.RegistryReadError, registry.RegistryInvalid) as e:
        raise UsageError(f"the registry must be valid first:\n{e}") from None


def same_file(a: Path, b: Path) -> bool:
    """True when the two paths name one file: the same real path, or hard links to one file."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _registries(explicit: Optional[Path], near: Iterable[Path]) -> List[Path]:
    """The registries whose files no tool may overwrite: the one given, the workspace's, and any
    registry.json beside an input or output or one directory up (fixtures/, calibration/)."""
    from tinyq.registry import registry

    found = [explicit] if explicit else []
    found.append(workspace_dir() / registry.DEFAULT_REGISTRY)
    for p in near:
        found += [p.parent / "registry.json", p.parent.parent / "registry.json"]
    return [p for p in found if p.is_file()]


def guard_outputs(outputs: Mapping[str, Optional[Path]], inputs: Iterable[Path], registry_path: Optional[Path] = None,
                  pinning: bool = False) -> None:
    """Refuses before any work is done when an output's directory is missing or is a file (exit 2),
    two outputs are one file, or an output resolves to an input or to any file a registry names:
    the registry itself, a model, sidecar, pinned int8, calibration, soak or validation set (exit 9).
    outputs maps the flag that sets each path (e.g. "--output") to the path, or None. pinning=True
    is the pinning path (register_model), which may replace what registry_path names."""
    outs = {flag: p for flag, p in outputs.items() if p is not None}
    inputs = [Path(p) for p in inputs]
    for flag, out in outs.items():
        _check_name_length(flag, out)
        if not out.parent.is_dir():
            what = "is a file, not a directory" if out.parent.exists() else "does not exist"
            raise UsageError(f"{flag} {out}: the directory {out.parent} {what}; pass a path in an existing directory")
        if out.is_dir():
            raise UsageError(f"{flag} {out} is a directory; pass a file path")
        if out.exists() and not out.is_file():  # a rename would replace /dev/null or a FIFO with a file
            raise UnsafeOutput(f"{flag} {out} is not a regular file (a device, FIFO or socket); pass a regular file path")
        for src in inputs:
            if same_file(out, src):
                raise UnsafeOutput(f"{flag} {out} is the input {src}; this tool never overwrites its input: pass another {flag}")
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if same_file(outs[a], outs[b]):
                raise UnsafeOutput(f"{a} and {b} are the same file {outs[a]}; pass two different paths")
    _refuse_registry_files(outs, inputs, registry_path, pinning)
    seen = {str(out): (os.path.islink(out), os.path.realpath(out)) for out in outs.values()}

    def again(paths: Sequence[str]) -> None:
        """The same guard under the write's lock, immediately before its commit, on the paths as they
        resolve now: a symlink that appeared at an output since, or that leads to a file a registry
        names, is refused."""
        now = {flag: out for flag, out in outs.items() if str(out) in paths}
        for flag, out in now.items():
            if (os.path.islink(out), os.path.realpath(out)) != seen[str(out)]:
                raise UnsafeOutput(f"{flag} {out}: a symlink appeared at the path after the check (it leads to "
                                   f"{os.path.realpath(out)}); nothing was written")
        _refuse_registry_files(now, inputs, registry_path, pinning)

    transaction.before_commit(again)


def _refuse_registry_files(outs: Mapping[str, Path], inputs: Sequence[Path], registry_path: Optional[Path],
                           pinning: bool) -> None:
    from tinyq.registry import registry_files

    for reg in _registries(registry_path, [*inputs, *outs.values()]):
        if pinning and registry_path and same_file(reg, registry_path):
            continue
        for named, what in registry_files.named_files(reg).items():
            for flag, out in outs.items():
                if same_file(out, named):
                    raise UnsafeOutput(
                        f"{flag} {out} is {what} in {reg}; no tool overwrites a file a registry names (pinned artefacts "
                        f"are replaced only by register_model or update_pins): pass another {flag}")


NAME_MAX, PATH_MAX = 255, 4096  # bytes of one file name, and of a whole path, on Linux


def _check_name_length(flag: str, out: Path) -> None:
    """A name the file system cannot hold is a usage error before any work, not an OSError after it
    (a default output name grows the input's by ".int8.onnx")."""
    name, whole = len(os.fsencode(out.name)), len(os.fsencode(str(out)))
    if name > NAME_MAX or whole > PATH_MAX:
        what = f"its file name is {name} bytes" if name > NAME_MAX else f"the path is {whole} bytes"
        raise UsageError(f"{flag} {_printable(out.name[:60])}...: {what}, over the {NAME_MAX if name > NAME_MAX else PATH_MAX} "
                         f"the file system allows; pass a shorter {flag}")


def guard_flags(outputs: Mapping[str, Optional[str]], inputs: Iterable[Path] = (), registry_path: Optional[Path] = None) -> None:
    """guard_outputs for output flags as given on the command line ({"--out-json": value or None})."""
    guard_outputs({flag: resolve_user_path(v) if v else None for flag, v in outputs.items()}, inputs, registry_path)
