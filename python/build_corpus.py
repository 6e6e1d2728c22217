"""Builds the video-quality corpus (model/corpus/vq_corpus.npz) deterministically.

Usage: tools/bazel run //python:build_corpus -- [--out P] [--jobs N] [--sources a,b] [--report-out R]

Real photographs bundled with scikit-image become pan-and-zoom clips at two resolutions,
encoded with x264, x265, AV1 and VP9 at six quality points by imageio-ffmpeg's ffmpeg and
scored with its libvmaf. See tinyq/corpus.py for the recipe.
"""

import sys
import time

from absl import flags

from tinyq import cli, corpus, provenance
from tinyq.fileio import atomic_write_npz

_OUT = flags.DEFINE_string("out", None, "Output .npz (default: model/corpus/vq_corpus.npz in the workspace).")
_JOBS = flags.DEFINE_integer("jobs", 2, "Clips encoded in parallel; the output does not depend on it.", lower_bound=1)
_SOURCES = flags.DEFINE_list("sources", None, f"Subset of sources (default all {len(corpus.SOURCES)}).")
_REPORT = flags.DEFINE_string("report-out", None, "Write a JSON report with run_provenance here.")


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    sources = _SOURCES.value or list(corpus.SOURCES)
    unknown = sorted(set(sources) - set(corpus.SOURCES))
    if unknown:
        raise cli.UsageError(f"--sources: unknown {unknown}; known: {', '.join(corpus.SOURCES)}")
    out = cli.path_or_default(_OUT.value, corpus.DEFAULT_PATH)
    out.parent.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    n_jobs = len(sources) * len(corpus.RESOLUTIONS) * sum(len(q) for _, q in corpus.CODECS.values())
    print(f"build_corpus: {len(sources)} sources, {n_jobs} encodes, {_JOBS.value} in parallel", flush=True)
    arrays = corpus.build(sources=sources, jobs=_JOBS.value, progress=lambda s: print(f"  {s}", flush=True))
    atomic_write_npz(out, arrays)
    elapsed = time.monotonic() - start
    print(
        f"build_corpus: wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(arrays['frame_vmaf'])} frames, "
        f"{len(arrays['patch_vmaf'])} patches) in {elapsed:.0f} s"
    )
    if _REPORT.value:
        report_path = cli.resolve_user_path(_REPORT.value)
        report = {
            "schema": "tinyq-build-corpus-report-v1",
            "wall_time_s": round(elapsed, 1),
            "frames": int(len(arrays["frame_vmaf"])),
            "patches": int(len(arrays["patch_vmaf"])),
            "tools": corpus.tool_versions(),
            "run_provenance": provenance.absl_provenance(
                tool="build_corpus", main_module=sys.modules[__name__], outputs=[(out, "corpus")]
            ),
        }
        provenance.write_report(report_path, report)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
