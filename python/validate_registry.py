"""Validates a tinyq model registry: schema, ids, path jail, hashes, calibration sets, sidecars.

Usage: bazel run //python:validate_registry -- [REGISTRY] [--strict] [--out-json R] [--recover]

REGISTRY defaults to model/tiny/registry.json in the workspace; a relative path resolves
against the caller's directory. Every finding names its fix. A registry whose structure, hashes
and files are valid is valid; findings that leave it usable (a quantised entry without a soak
fixture, as a reference toolkit's registry has) are printed as warnings, and --strict (which CI
uses on the project's own registry) makes them failures too.
--recover first sets aside an interrupted update's journal that tinyq refuses to act on (exit 13:
it names a file outside its directory, a symlink, or is not a journal at all), in the registry's
directory and its subdirectories: renamed .tinyq-journal.refused.json, every other file left as it
is. A journal tinyq can act on is finished as every run finishes it.
Exit codes: 0 valid (warnings allowed without --strict), 1 invalid, 2 usage or I/O error, 13 a
journal tinyq will not act on (see --recover).
"""

import sys
from pathlib import Path

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io import transaction
from tinyq.registry import registry

_OUT_JSON = flags.DEFINE_string("out-json", None, "Write a JSON report (with run_provenance) here.")
_STRICT = flags.DEFINE_bool("strict", False, "Warnings (a quantised entry without a soak fixture) fail too.")
_RECOVER = flags.DEFINE_bool("recover", False, "First set aside a journal tinyq refuses to act on (exit 13), "
                             "touching no other file.")

REPORT_SCHEMA = "tinyq-validate-registry-report-v1"


def main(argv):
    if len(argv) > 2:
        raise cli.UsageError(f"expected at most one REGISTRY argument, got {len(argv) - 1}: {' '.join(argv[1:])}")
    path = cli.resolve_user_path(argv[1]) if len(argv) == 2 else cli.workspace_dir() / registry.DEFAULT_REGISTRY
    if _OUT_JSON.value:
        cli.guard_flags({"--out-json": _OUT_JSON.value}, [path], path)
    if _RECOVER.value:
        _set_aside_journals(path)
    try:
        reg, findings = registry.check(path)
    except registry.RegistryReadError as e:
        raise cli.UsageError(str(e)) from None

    for f in findings:
        print(f.format(path), file=sys.stderr)
    failing = registry.errors(findings, _STRICT.value)
    ok = reg is not None and not failing
    warnings = len(findings) - len(failing)
    if ok:
        print(f"OK: {path}: {len(reg.models)} models valid ({len(reg.quantised())} quantised)"
              + (f", {warnings} warnings" if warnings else ""))
    else:
        print(f"INVALID: {path}: {len(failing)} findings" + (" (--strict)" if _STRICT.value and warnings else ""), file=sys.stderr)

    if _OUT_JSON.value:
        out = cli.resolve_user_path(_OUT_JSON.value)
        report = {
            "schema": REPORT_SCHEMA,
            "registry": str(path),
            "valid": ok,
            "strict": _STRICT.value,
            "model_count": len(reg.models) if reg else None,
            "findings": [f.as_dict() for f in findings],
        }
        try:
            report["run_provenance"] = provenance.absl_provenance(
                tool="validate_registry", main_module=sys.modules[__name__], inputs=[(path, "registry")]
            )
            provenance.write_report(out, report)
        except OSError as e:
            raise cli.UsageError(f"cannot write report {out}: {e.strerror}") from None
    return cli.EXIT_OK if ok else cli.EXIT_FAIL


def _set_aside_journals(path) -> None:
    root = Path(transaction.real_target(path)).parent
    subdirectories = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []
    for d in [root, *subdirectories]:
        moved = transaction.set_aside(d)
        if moved:
            print(f"validate_registry: set aside {d / transaction.JOURNAL_NAME} as {moved}; no other file was touched",
                  file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
