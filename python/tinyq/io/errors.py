"""The exit codes every tinyq tool shares, and the errors that carry them (tinyq.app.cli prints them
as one line). The table of every tool's codes is in docs/user-guide.md."""

EXIT_OK = 0
EXIT_FAIL = 1  # The input was read and judged: invalid registry, over budget, ...
EXIT_USAGE = 2  # Bad flags, unreadable or missing files, anything that stopped the judging.
EXIT_NOT_JUDGED = 5  # The models ran, but no output could be judged (all skipped, or one value): never a pass.
# 3, 4, 6, 7 and 14 belong to single tools (see the exit-code table in docs/user-guide.md).
EXIT_UNSAFE_OUTPUT = 9  # An output would overwrite an input or a file a registry names: nothing written.
EXIT_TOO_LARGE = 10  # An input passes a stated resource cap (decompressed bytes, samples, nesting).
EXIT_BUSY = 11  # Another tinyq tool holds the directory's lock past the bounded wait.
EXIT_WRITE_FAILED = 12  # The outputs could not be written (disk full, read-only, permissions): nothing written.
EXIT_UNTRUSTED_JOURNAL = 13  # A recovery journal names what tinyq may not touch, or is no journal: nothing touched.
EXIT_INTERNAL = 70  # A bug in tinyq: an unexpected exception (the one-line safety net; TINYQ_DEBUG=1 shows it).


class UsageError(Exception):
    """A problem with how the tool was called or with reading its inputs (exit 2)."""

    exit_code = EXIT_USAGE


class UnsafeOutput(UsageError):
    """An output path that would overwrite an input or a file a registry names (exit 9)."""

    exit_code = EXIT_UNSAFE_OUTPUT


class TooLarge(UsageError):
    """An input over a stated resource cap, found before it is loaded (exit 10)."""

    exit_code = EXIT_TOO_LARGE


class Busy(UsageError):
    """Another tinyq writer holds the lock past the bounded wait (exit 11)."""

    exit_code = EXIT_BUSY


class WriteFailed(UsageError):
    """The outputs could not be written; every old file is still in place (exit 12)."""

    exit_code = EXIT_WRITE_FAILED


class UntrustedJournal(UsageError):
    """A journal tinyq refuses to act on: it names a file outside its directory or through a symlink,
    or is not a journal at all (exit 13). Nothing was touched."""

    exit_code = EXIT_UNTRUSTED_JOURNAL
