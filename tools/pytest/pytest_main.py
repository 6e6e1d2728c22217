"""Runs pytest on the test files named in argv, writing JUnit XML where Bazel asks for it."""

import os
import sys

import pytest


def main() -> int:
    args = ["-p", "no:cacheprovider", "-q", "--rootdir", os.getcwd()]
    if os.environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", os.environ["XML_OUTPUT_FILE"]]
    if os.environ.get("TEST_TMPDIR"):
        args += ["--basetemp", os.path.join(os.environ["TEST_TMPDIR"], "pytest")]
    # pytest's exit code 5 (no tests collected) fails the Bazel test, as it should.
    return pytest.main(args + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
