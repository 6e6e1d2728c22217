"""The committed restoration corpus: visible artefacts, the corpus's splits, ffmpeg baselines chosen
on val only, and a rebuild that reproduces the committed rows."""

from pathlib import Path

import numpy as np
import pytest

from tinyq.judge.metrics import psnr
from tinyq.zoo import corpus, restoration

PATH = Path("model/corpus/restoration_corpus.npz")


@pytest.fixture(scope="module")
def committed():
    return restoration.load(PATH)


def test_same_sources_and_splits_as_the_vq_corpus(committed):
    a = committed.arrays
    for src in np.unique(a["source"]):
        splits = np.unique(a["split"][a["source"] == src])
        assert len(splits) == 1 and corpus.SPLIT_NAMES[splits[0]] == corpus.split_of(corpus.SOURCES[src])
    assert committed.meta["splits"] == {k: list(v) for k, v in corpus.SPLITS.items()}
    assert {corpus.SOURCES[s] for s in np.unique(a["source"])} == set(corpus.SOURCES)


def test_codecs_without_in_loop_filtering_leave_visible_artefacts(committed):
    assert set(committed.meta["codec_names"]) >= {"mpeg2", "mpeg4", "mjpeg"}
    dist, ref = committed.pairs("soak")
    per_patch = psnr(dist, ref)
    for codec in committed.meta["codec_names"]:
        for q in committed.meta["codecs"][codec]["qualities"]:
            rows = np.array([lab == f"{codec} q{q}" for lab in committed.labels("soak")])
            assert rows.any(), f"{codec} q{q} has no soak rows"
            assert per_patch[rows].mean() < 40, f"{codec} q{q}: {per_patch[rows].mean():.1f} dB is nearly lossless"


def test_baselines_cover_val_and_soak_aligned_with_their_pairs(committed):
    for split in ("val", "soak"):
        dist, ref = committed.pairs(split)
        assert dist.shape[1:] == ref.shape[1:] == (1, restoration.WINDOW, restoration.WINDOW)
        for name in restoration.FILTER_NAMES:
            out = committed.baseline(name, split)
            assert out.shape == restoration.centre(dist).shape
        # The chosen spp setting restores something on its own split.
        gain = psnr(committed.baseline("spp", split), restoration.centre(ref)) - psnr(restoration.centre(dist), restoration.centre(ref))
        assert gain.mean() > 0.1
    with pytest.raises(KeyError):
        committed.baseline("spp", "train")


def test_settings_are_chosen_on_val_rows_only():
    """Two settings: the first is better on val, the second far better on soak. Val decides."""
    rng = np.random.default_rng(0)
    n, w = 8, restoration.WINDOW
    ref = rng.integers(60, 200, (n, w, w)).astype(np.uint8)
    dist = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    split = np.array([corpus.SPLIT_NAMES.index("val")] * 4 + [corpus.SPLIT_NAMES.index("soak")] * 4, np.int16)
    good_on_val = restoration.centre(dist).copy()
    good_on_val[:4] = ((restoration.centre(dist[:4]).astype(int) + restoration.centre(ref[:4])) // 2).astype(np.uint8)
    good_on_soak = restoration.centre(dist).copy()
    good_on_soak[4:] = restoration.centre(ref[4:])
    filtered = np.stack([good_on_val if i % 2 == 0 else good_on_soak for i in range(len(restoration.GRID))])
    out = {"dist": dist, "ref": ref, "ref_index": np.arange(n, dtype=np.int32), "split": split}
    chosen = restoration.RestorationCorpus(restoration._baselines(out, filtered, np.arange(n))).meta["baseline_settings"]
    for name, setting in chosen.items():
        assert restoration.GRID.index((name, setting)) % 2 == 0, f"{name}: {setting} was chosen on soak rows"


def test_rebuild_of_a_soak_clip_matches_the_committed_rows(committed):
    source, (width, height) = "coffee", corpus.RESOLUTIONS[0]
    first = restoration._run_clip(source, width, height)
    second = restoration._run_clip(source, width, height)
    a = committed.arrays
    rows = (a["source"] == corpus.SOURCES.index(source)) & (a["resolution"] == 0)
    dist = np.concatenate([r["dist"] for r in first["results"]])
    np.testing.assert_array_equal(dist, np.concatenate([r["dist"] for r in second["results"]]))
    np.testing.assert_array_equal(dist, a["dist"][rows])
    np.testing.assert_array_equal(first["ref"], a["ref"][a["ref_index"][rows]][: len(first["ref"])])
    kept = {row: i for i, row in enumerate(a["baseline_rows"])}
    for name, setting in committed.meta["baseline_settings"].items():
        g = restoration.GRID.index((name, setting))
        rebuilt = np.concatenate([r["filtered"][g] for r in first["results"]])
        np.testing.assert_array_equal(rebuilt, a[f"baseline_{name}"][[kept[r] for r in np.flatnonzero(rows)]], err_msg=name)
