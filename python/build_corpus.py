"""Builds a corpus deterministically: the video-quality corpus or the restoration corpus.

Usage: tools/bazel run //python:build_corpus -- [--kind vq|restoration] [--out P] [--jobs N]
           [--sources a,b] [--report-out R]

  vq           model/corpus/vq_corpus.npz: real photographs bundled with scikit-image become
               pan-and-zoom clips at two resolutions, encoded with x264, x265, AV1 and VP9 at six
               quality points by imageio-ffmpeg's ffmpeg and scored with its libvmaf
               (tinyq/zoo/corpus.py).
  restoration  model/corpus/restoration_corpus.npz: the same clips through MPEG-2, MPEG-4 part 2,
               MJPEG and x264 without deblocking; (decoded, source) luma patches, and ffmpeg's
               post-processing filters at their val-chosen settings (tinyq/zoo/restoration.py).
"""

import sys
import time

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_npz
from tinyq.zoo import corpus, restoration

_KIND = flags.DEFINE_enum("kind", "vq", ["vq", "restoration"], "Which corpus to build.")
_OUT = flags.DEFINE_string("out", None, "Output .npz (default: model/corpus/<kind>_corpus.npz in the workspace).")
_JOBS = flags.DEFINE_integer("jobs", 2, "Clips encoded in parallel; the output does not depend on it.", lower_bound=1)
_SOURCES = flags.DEFINE_list("sources", None, f"Subset of sources (default all {len(corpus.SOURCES)}).")
_REPORT = flags.DEFINE_string("report-out", None, "Write a JSON report with run_provenance here.")


def _build(kind, sources, jobs, progress):
    if kind == "vq":
        n_jobs = len(sources) * len(corpus.RESOLUTIONS) * sum(len(q) for _, q in corpus.CODECS.values())
        print(f"build_corpus: vq, {len(sources)} sources, {n_jobs} encodes, {jobs} in parallel", flush=True)
        arrays = corpus.build(sources=sources, jobs=jobs, progress=progress)
        return arrays, {"frames": int(len(arrays["frame_vmaf"])), "patches": int(len(arrays["patch_vmaf"]))}
    n_jobs = len(sources) * len(corpus.RESOLUTIONS) * sum(len(q) for _, q in restoration.CODECS.values())
    print(f"build_corpus: restoration, {len(sources)} sources, {n_jobs} encodes, {len(restoration.GRID)} filter "
          f"settings on val and soak, {jobs} in parallel", flush=True)
    arrays = restoration.build(sources=sources, jobs=jobs, progress=progress)
    meta = restoration.RestorationCorpus(arrays).meta
    return arrays, {"pairs": int(len(arrays["dist"])), "baseline_settings": meta["baseline_settings"]}


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    sources = _SOURCES.value or list(corpus.SOURCES)
    unknown = sorted(set(sources) - set(corpus.SOURCES))
    if unknown:
        raise cli.UsageError(f"--sources: unknown {unknown}; known: {', '.join(corpus.SOURCES)}")
    if _KIND.value == "restoration" and not {corpus.split_of(s) for s in sources} >= {"val", "soak"}:
        raise cli.UsageError("--sources: the restoration corpus needs val and soak sources (its baselines are chosen on val)")
    default = corpus.DEFAULT_PATH if _KIND.value == "vq" else restoration.DEFAULT_PATH
    out = cli.path_or_default(_OUT.value, default)
    cli.guard_flags({"--report-out": _REPORT.value})
    out.parent.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    arrays, counts = _build(_KIND.value, sources, _JOBS.value, lambda s: print(f"  {s}", flush=True))
    atomic_write_npz(out, arrays)
    elapsed = time.monotonic() - start
    print(f"build_corpus: wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {counts}) in {elapsed:.0f} s")
    if _REPORT.value:
        report = {
            "schema": "tinyq-build-corpus-report-v1",
            "kind": _KIND.value,
            "wall_time_s": round(elapsed, 1),
            **counts,
            "tools": corpus.tool_versions(),
            "run_provenance": provenance.absl_provenance(
                tool="build_corpus", main_module=sys.modules[__name__], outputs=[(out, "corpus")]
            ),
        }
        provenance.write_report(cli.resolve_user_path(_REPORT.value), report)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
