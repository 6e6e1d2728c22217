"""tinyq.zoo.shift: byte-stable, really shifted, fits the graphs, and built from the val split alone."""

from pathlib import Path

import numpy as np
import pytest

from tinyq.io import fileio
from tinyq.model import calibration
from tinyq.registry import layout, registry
from tinyq.zoo import corpus, shift

ROOT = Path("model/tiny")  # under Bazel, the runfiles root mirrors the workspace
IMAGE_MODELS = ("nr_metric_v1", "fr_patch_v1", "learned_filter_v1", "learned_filter_v2")
FEATURE_MODELS = ("vmaf_tiny_v2", "vmaf_tiny_v3", "vmaf_tiny_v4")
CHEAP = [c for c in shift.VIDEO_CONDITIONS if c.name in ("x264_crf51@128x72", "noise_0.2+x264_crf51@128x72")]


def val_inputs(model_id):
    with np.load(layout.validation_path(ROOT, model_id)) as z:
        return {k: z[k] for k in z.files if k != calibration.TARGET_KEY}


def small_val(n=24, size=32):
    """Smooth synthetic luma in [0.1, 0.9], ref and dist."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.3 * np.sin(2 * np.pi * (xx[None] * rng.uniform(1, 3, (n, 1, 1)) + yy[None]))
    ref = base[:, None].astype(np.float32)
    return {"ref": ref, "dist": shift.to_luma(ref + rng.normal(0, 0.01, ref.shape))}


def test_image_shift_is_byte_identical_twice():
    val = small_val()
    a = fileio.npz_bytes(shift.image_shift("fr_patch_v1", val, n=24))
    b = fileio.npz_bytes(shift.image_shift("fr_patch_v1", val, n=24))
    assert a == b


def test_feature_shift_is_byte_identical_twice():
    a = fileio.npz_bytes(shift.feature_shift(["cell"], CHEAP))
    b = fileio.npz_bytes(shift.feature_shift(["cell"], CHEAP))
    assert a == b
    assert shift.feature_shift(["cell"], CHEAP)["features"].shape == (2 * corpus.N_FRAMES, len(corpus.FEATURES))


def test_camera_changes_touch_ref_and_dist_the_rest_only_dist():
    val = small_val()
    out = shift.image_shift("fr_patch_v1", val, n=24)
    groups = shift.pick_groups(24, 24, len(shift.IMAGE_DEGRADATIONS), shift.seed_of("fr_patch_v1"))
    for i, name in enumerate(shift.IMAGE_DEGRADATION_NAMES):
        ref_changed = not np.array_equal(out["ref"][2 * i : 2 * i + 2], shift.to_luma(val["ref"][groups[i]]))
        assert ref_changed == name.startswith(shift.CAMERA_PREFIXES), name
        assert not np.array_equal(out["dist"][2 * i : 2 * i + 2], val["dist"][groups[i]]), name


def _hf(x):
    return float(np.abs(np.diff(x, axis=-1)).mean())


def _blockiness(x):
    """Mean step across 8-pixel block edges over the mean step anywhere."""
    steps = np.abs(np.diff(x, axis=-1))
    return float(steps[..., 7::8].mean() / steps.mean())


def _std(x):
    """Mean within-sample standard deviation."""
    return float(x.std(axis=(1, 2, 3)).mean())


def _mean(x):
    return float(x.mean())


# degradation prefix -> (statistic, how the degraded rows' value must compare to the same rows' original)
MOVES = {
    "noise_": (_hf, lambda new, old: new > 3 * old),
    "blur_": (_hf, lambda new, old: new < 0.8 * old),
    "rescale_": (_hf, lambda new, old: new < 0.9 * old),
    "contrast_0.4": (_std, lambda new, old: new < 0.5 * old),
    "contrast_1.8": (_std, lambda new, old: new > 1.4 * old),
    "brightness_-": (_mean, lambda new, old: new < old - 0.15),
    "brightness_+": (_mean, lambda new, old: new > old + 0.15),
    "jpeg_": (_blockiness, lambda new, old: new > 2 * old),
}


@pytest.mark.parametrize("model_id", ["nr_metric_v1", "learned_filter_v2"])
def test_each_degradation_moves_the_val_data(model_id):
    val = val_inputs(model_id)["dist"]
    out = shift.image_shift(model_id, {"dist": val})["dist"]
    groups = shift.pick_groups(len(val), shift.SAMPLES, len(shift.IMAGE_DEGRADATIONS), shift.seed_of(model_id))
    per = len(groups[0])
    assert per * len(groups) == len(out) == shift.SAMPLES
    for i, name in enumerate(shift.IMAGE_DEGRADATION_NAMES):
        (stat, moved), = [v for k, v in MOVES.items() if name.startswith(k)]
        new, old = stat(out[i * per : (i + 1) * per]), stat(val[groups[i]])
        assert moved(new, old), f"{name}: {stat.__name__} {old:.4g} -> {new:.4g}"


def test_feature_shift_leaves_the_corpus_range():
    """Real libvmaf features under heavier settings: some fall below anything the val split holds."""
    with np.load(layout.validation_path(ROOT, "vmaf_tiny_v2")) as z:
        val = z["features"]
    with np.load(layout.shift_path(ROOT, "vmaf_tiny_v2")) as z:
        shifted = z["features"]
    assert (shifted.min(axis=0)[:5] < val.min(axis=0)[:5]).all()  # adm2 and the four vif scales
    assert len(shift.feature_labels()) == len(shifted)


@pytest.mark.parametrize("model_id", IMAGE_MODELS + FEATURE_MODELS)
def test_committed_sets_fit_the_graph_inputs_and_hold_nothing_else(model_id):
    entry = registry.load(ROOT / "registry.json", read_held_out=False).get(model_id)
    inputs = calibration.graph_inputs(entry.onnx)
    path = layout.shift_path(ROOT, model_id)
    arrays = calibration.load_npz(path, inputs)  # raises on any extra key, dtype or shape problem
    assert sorted(arrays) == sorted(i.name for i in inputs)
    assert all(a.dtype == np.float32 and len(a) == 504 for a in arrays.values())
    assert path.stat().st_size < 2_000_000


@pytest.mark.parametrize("model_id", ["nr_metric_v1", "fr_patch_v1"])
def test_image_sets_are_rebuilt_byte_for_byte(model_id):
    inputs = calibration.graph_inputs(ROOT / f"{model_id}.onnx")
    fresh = fileio.npz_bytes(shift.build(ROOT, model_id, inputs))
    assert fresh == layout.shift_path(ROOT, model_id).read_bytes()


@pytest.fixture
def no_held_out_reads(monkeypatch):
    """Any read of a train or soak photograph, or of a soak or calibration file, raises."""
    loaded = []
    real_load_source, real_np_load = corpus.load_source, np.load

    def load_source(name):
        if corpus.split_of(name) != "val":
            raise AssertionError(f"read the {corpus.split_of(name)} photograph {name!r}")
        loaded.append(name)
        return real_load_source(name)

    def np_load(path, *args, **kwargs):
        if any(part in str(path) for part in ("fixtures", ".soak.", "calibration/")):
            raise AssertionError(f"read {path}")
        return real_np_load(path, *args, **kwargs)

    monkeypatch.setattr(corpus, "load_source", load_source)
    monkeypatch.setattr(np, "load", np_load)
    return loaded


def test_image_build_reads_only_the_val_set(tmp_path, no_held_out_reads):
    """A copy of the model dir with only the val set: the soak fixture is garbage and never opened."""
    for model_id in ("nr_metric_v1", "fr_patch_v1"):
        (tmp_path / "validation").mkdir(exist_ok=True)
        (tmp_path / "fixtures").mkdir(exist_ok=True)
        val = layout.validation_path(tmp_path, model_id)
        val.write_bytes(layout.validation_path(ROOT, model_id).read_bytes())
        layout.fixture_path(tmp_path, model_id).write_bytes(b"not an npz")
        inputs = calibration.graph_inputs(ROOT / f"{model_id}.onnx")
        fresh = fileio.npz_bytes(shift.build(tmp_path, model_id, inputs))
        assert fresh == layout.shift_path(ROOT, model_id).read_bytes()


def test_feature_build_loads_only_val_photographs(no_held_out_reads):
    shift.feature_shift(conditions=CHEAP[:1])
    assert sorted(set(no_held_out_reads)) == sorted(corpus.SPLITS["val"])


def test_a_non_val_source_is_refused():
    with pytest.raises(ValueError, match="soak split"):
        shift.feature_shift([corpus.SPLITS["soak"][0]], CHEAP[:1])


def test_unknown_inputs_have_no_recipe(tmp_path):
    inputs = [calibration.GraphInput("x", ("batch", 3), 1)]
    with pytest.raises(ValueError, match="no shift recipe"):
        shift.build(tmp_path, "other", inputs)
