"""The committed corpus: real sources split by source, the recipe's minimums, and reproducibility."""

from pathlib import Path

import numpy as np
import pytest

from tinyq.io.fileio import npz_bytes
from tinyq.zoo import corpus

CORPUS = Path("model/corpus/vq_corpus.npz")
SYNTHETIC = {"chessboard", "color", "horse", "logo", "phantom", "checkerboard", "binary_blobs"}


@pytest.fixture(scope="module")
def committed():
    return corpus.load(CORPUS)


def test_no_source_is_in_two_splits(committed):
    a = committed.arrays
    for prefix in ("frame", "patch"):
        for src in np.unique(a[f"{prefix}_source"]):
            splits = np.unique(a[f"{prefix}_split"][a[f"{prefix}_source"] == src])
            assert len(splits) == 1, f"source {corpus.SOURCES[src]} is in splits {splits}"
            assert corpus.SPLIT_NAMES[splits[0]] == corpus.split_of(corpus.SOURCES[src])
    names = [set(v) for v in corpus.SPLITS.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_recipe_minimums(committed):
    meta = committed.meta
    assert len(meta["sources"]) >= 16 and not SYNTHETIC & set(meta["sources"])
    assert len(meta["codecs"]) >= 4 and all(len(c["qualities"]) >= 5 for c in meta["codecs"].values())
    assert len(meta["resolutions"]) >= 2
    jobs = len(meta["sources"]) * len(meta["resolutions"]) * sum(len(c["qualities"]) for c in meta["codecs"].values())
    assert len(committed.arrays["frame_vmaf"]) == jobs * meta["frames"]
    assert committed.arrays["frame_features"].shape[1] == len(corpus.FEATURES) == 6
    for split in corpus.SPLIT_NAMES:
        assert len(committed.frames(split)[1]) > 0 and len(committed.patches(split)[2]) > 0


def test_vmaf_spans_the_quality_range(committed):
    vmaf = committed.arrays["frame_vmaf"]
    assert vmaf.min() < 30 and vmaf.max() > 95 and np.all(np.isfinite(vmaf))


def test_rebuild_is_deterministic_and_matches_the_committed_rows(committed):
    kwargs = dict(sources=["coffee"], resolutions=[corpus.RESOLUTIONS[0]], codecs=["x264", "vp9"])
    first = corpus.build(**kwargs)
    second = corpus.build(**kwargs)
    assert npz_bytes(first) == npz_bytes(second)
    a = committed.arrays
    src, res = corpus.SOURCES.index("coffee"), 0
    codecs = [corpus.CODEC_NAMES.index(c) for c in kwargs["codecs"]]
    for prefix, keys in (("frame", ("features", "vmaf", "quality")), ("patch", ("dist", "ref", "vmaf", "quality"))):
        rows = (a[f"{prefix}_source"] == src) & (a[f"{prefix}_resolution"] == res) & np.isin(a[f"{prefix}_codec"], codecs)
        for key in keys:
            np.testing.assert_array_equal(first[f"{prefix}_{key}"], a[f"{prefix}_{key}"][rows], err_msg=f"{prefix}_{key}")
