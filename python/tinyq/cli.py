"""What every tinyq command-line tool shares: exit codes, flag parsing, path resolution."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, List

from absl import app, flags

# Exit codes, the same for every tool.
EXIT_OK = 0
EXIT_FAIL = 1  # The input was read and judged: invalid registry, over budget, ...
EXIT_USAGE = 2  # Bad flags, unreadable or missing files, anything that stopped the judging.


class UsageError(Exception):
    """A problem with how the tool was called or with reading its inputs (exit 2)."""


def _parse_flags(argv: List[str]) -> List[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        prog = os.path.basename(argv[0]) if argv else "tinyq"
        sys.stderr.write(f"{prog}: {e}\nPass --help for usage.\n")
        sys.exit(EXIT_USAGE)


def run(main: Callable[[List[str]], int]) -> None:
    """absl's app.run, with flag errors and UsageError mapped to exit code 2."""

    def _main(argv: List[str]) -> int:
        try:
            return main(argv)
        except UsageError as e:
            prog = os.path.basename(argv[0]) if argv else "tinyq"
            sys.stderr.write(f"{prog}: error: {e}\n")
            return EXIT_USAGE

    app.run(_main, flags_parser=_parse_flags)


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


def load_valid_registry(path: Path):
    """The validated registry, or a UsageError listing every finding (tools need a valid one)."""
    from tinyq import registry

    try:
        return registry.load(path)
    except (registry.RegistryReadError, registry.RegistryInvalid) as e:
        raise UsageError(f"the registry must be valid first:\n{e}") from None
