"""Shift sets: inputs outside the corpus's distribution, to see how int8 holds up off it.

The gate judges int8 on the soak fixture, drawn from the same distribution as calibration.
A shift set (model/tiny/shift/<id>.shift.npz: one float32 [N, ...] array per ONNX input, named
as the input, nothing else) holds degradations stronger than the corpus holds. It is built only
from the val split: the image models' sets from the val set's inputs
(model/tiny/validation/<id>.val.npz), the feature models' from the val photographs
(tinyq.zoo.corpus.SPLITS["val"]). The train and soak splits are never read.

Image models (nr_metric_v1, fr_patch_v1, learned_filter_v1/v2): the val inputs are drawn
without replacement (seed crc32("shift/<id>")), 504 of them, and split evenly over the 12
degradations of IMAGE_DEGRADATIONS (42 each), one per sample, rows grouped in that order:
  noise_0.05, noise_0.1, noise_0.2  additive Gaussian noise, sigma on the [0, 1] luma scale
                                     (generator seeded crc32("shift/<id>/<degradation>"))
  blur_1.5, blur_3                  Gaussian blur, sigma in pixels (scipy.ndimage, reflect)
  contrast_0.4, contrast_1.8        (x - mean) * k + mean, the mean per sample
  brightness_-0.25, brightness_+0.25  x + delta
  jpeg_q31                          MJPEG at qscale 31, the coarsest (the corpus stops at 20),
                                     single-threaded ffmpeg from imageio-ffmpeg, 4:4:4
  rescale_0.5, rescale_0.25         down by the factor (anti-aliased) then back up, bilinear:
                                     the content scale of another resolution
Every result is clipped to [0, 1] and rounded to the 8-bit grid, as decoded luma is. For
fr_patch_v1 only `dist` is degraded, except contrast and brightness, which change `ref` and
`dist` alike, as a camera change would.

Feature models (vmaf_tiny_v2/v3/v4, one shared set): real libvmaf canonical-6 features of the
val photographs' clips (tinyq.zoo.corpus.make_clip, same pan and zoom) under VIDEO_CONDITIONS, each
on each val photograph, 12 frames per clip (6 for the fast-motion one): 4 x 126 = 504 rows. The distorted clip is
pre-filtered (RGB, before encoding) and encoded; libvmaf scores it against the clean clip:
  x264_crf51@128x72, x264_crf51@640x360   x264 at CRF 51 (the corpus stops at 50) at two
                                           resolutions the corpus lacks (it has 256x144, 384x216)
  noise_0.1+x264_crf51@256x144            Gaussian noise sigma 0.1 (x255), seed
                                           crc32("shift/video/<source>/<condition>")
  noise_0.2+x264_crf51@128x72             sigma 0.2, the same seeding
  noise_0.05+x264_crf40@640x360
  blur_3+x264_crf51@256x144               Gaussian blur sigma 3 px
  contrast_0.4+x264_crf44@384x216         contrast x0.4 around the frame mean
  brightness_+0.25+x264_crf44@384x216     +0.25 (x255)
  mjpeg_q31@384x216                       MJPEG at qscale 31, a codec the vq corpus lacks
  fast_motion_x2+x264_crf51@256x144       every second frame: twice the pan speed
  av1_crf63@640x360                       libaom at CRF 63 at a resolution the corpus lacks
Encoders are single-threaded (tinyq.zoo.corpus.CODECS's settings), so the bytes are stable.
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tinyq.model import calibration
from tinyq.registry import layout
from tinyq.zoo import corpus

SAMPLES = 504  # image models: 42 per degradation
CAMERA_PREFIXES = ("contrast_", "brightness_")


def seed_of(*parts: object) -> int:
    return zlib.crc32("/".join(["shift", *map(str, parts)]).encode())


def to_luma(x: np.ndarray) -> np.ndarray:
    """Clipped to [0, 1] and rounded to the 8-bit grid, float32."""
    return (np.rint(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


# --- image degradations: each maps a [n, 1, H, W] batch in [0, 1] (and a seeded generator) to one

def add_noise(x: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape)


def blur(x: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="reflect")


def contrast(x: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * k + mean


def brightness(x: np.ndarray, rng: np.random.Generator, delta: float) -> np.ndarray:
    return x + delta


def rescale(x: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    from skimage.transform import resize

    n, c, h, w = x.shape
    small = (n, c, max(1, round(h * factor)), max(1, round(w * factor)))
    down = resize(x.astype(np.float64), small, order=1, anti_aliasing=True)
    return resize(down, x.shape, order=1, anti_aliasing=False)


def jpeg(x: np.ndarray, rng: np.random.Generator, qscale: int) -> np.ndarray:
    """Each sample as one MJPEG frame (intra only), encoded and decoded by the bundled ffmpeg."""
    n, _, h, w = x.shape
    gray = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="tinyq_shift_") as tmp:
        raw, enc, dec = (Path(tmp) / name for name in ("in.gray", "out.mkv", "out.gray"))
        raw.write_bytes(gray.tobytes())
        corpus._ffmpeg(["-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}", "-r", str(corpus.FPS), "-i", str(raw),
                        "-c:v", "mjpeg", "-threads", "1", "-pix_fmt", "yuvj444p", "-q:v", str(qscale), str(enc)])
        corpus._ffmpeg(["-threads", "1", "-i", str(enc), "-f", "rawvideo", "-pix_fmt", "gray", str(dec)])
        out = np.frombuffer(dec.read_bytes(), np.uint8)
    if out.size != gray.size:
        raise RuntimeError(f"ffmpeg decoded {out.size} pixels, expected {gray.size}")
    return out.reshape(x.shape).astype(np.float32) / 255.0


IMAGE_DEGRADATIONS: Tuple[Tuple[str, Callable[..., np.ndarray]], ...] = (
    ("noise_0.05", partial(add_noise, sigma=0.05)),
    ("noise_0.1", partial(add_noise, sigma=0.1)),
    ("noise_0.2", partial(add_noise, sigma=0.2)),
    ("blur_1.5", partial(blur, sigma=1.5)),
    ("blur_3", partial(blur, sigma=3.0)),
    ("contrast_0.4", partial(contrast, k=0.4)),
    ("contrast_1.8", partial(contrast, k=1.8)),
    ("brightness_-0.25", partial(brightness, delta=-0.25)),
    ("brightness_+0.25", partial(brightness, delta=0.25)),
    ("jpeg_q31", partial(jpeg, qscale=31)),
    ("rescale_0.5", partial(rescale, factor=0.5)),
    ("rescale_0.25", partial(rescale, factor=0.25)),
)
IMAGE_DEGRADATION_NAMES = tuple(name for name, _ in IMAGE_DEGRADATIONS)


def pick_groups(n_total: int, n: int, n_groups: int, seed: int) -> List[np.ndarray]:
    """n_groups disjoint sorted index sets of n // n_groups each, drawn without replacement."""
    per = min(n, n_total) // n_groups
    if per < 1:
        raise ValueError(f"{n_total} val samples cannot fill {n_groups} degradations")
    idx = np.random.default_rng(seed).choice(n_total, per * n_groups, replace=False)
    return [np.sort(g) for g in idx.reshape(n_groups, per)]


def degrades(key: str, name: str) -> bool:
    """Whether a degradation touches this input: every one touches `dist`; a camera change touches all."""
    return key == "dist" or name.startswith(CAMERA_PREFIXES)


def image_shift(model_id: str, val_inputs: Mapping[str, np.ndarray], n: Optional[int] = None,
                degradations: Sequence[str] = IMAGE_DEGRADATION_NAMES) -> Dict[str, np.ndarray]:
    """The shift set of an image model from its val inputs: rows grouped by degradation, in order."""
    chosen = [(name, fn) for name, fn in IMAGE_DEGRADATIONS if name in degradations]
    n_total = len(next(iter(val_inputs.values())))
    groups = pick_groups(n_total, n or SAMPLES, len(chosen), seed_of(model_id))
    out: Dict[str, List[np.ndarray]] = {k: [] for k in val_inputs}
    for (name, fn), rows in zip(chosen, groups):
        for key, arr in val_inputs.items():
            x = arr[rows].astype(np.float32)
            if degrades(key, name):
                x = fn(x, np.random.default_rng(seed_of(model_id, name)))
            out[key].append(to_luma(x))
    return {k: np.concatenate(v) for k, v in out.items()}


def image_labels(model_id: str, n_total: int, n: Optional[int] = None,
                 degradations: Sequence[str] = IMAGE_DEGRADATION_NAMES) -> List[str]:
    """The degradation of each row of image_shift's output."""
    per = min(n or SAMPLES, n_total) // len(degradations)
    return [name for name in degradations for _ in range(per)]


# --- feature models: real libvmaf features of the val photographs' clips under heavier settings

def _x264(crf: int) -> Tuple[str, ...]:
    return tuple(a.format(q=crf) for a in corpus.CODECS["x264"][0])


def _av1(crf: int) -> Tuple[str, ...]:
    return tuple(a.format(q=crf) for a in corpus.CODECS["av1"][0])


_MJPEG_Q31 = ("-c:v", "mjpeg", "-threads", "1", "-strict", "unofficial", "-q:v", "31")


@dataclass(frozen=True)
class Condition:
    name: str
    width: int
    height: int
    codec: Tuple[str, ...]  # ffmpeg encoder arguments
    prefilter: Optional[Callable[..., np.ndarray]] = None  # an image degradation, on the RGB frames
    frame_step: int = 1  # 2 keeps every second frame: twice the motion


VIDEO_CONDITIONS: Tuple[Condition, ...] = (
    Condition("x264_crf51@128x72", 128, 72, _x264(51)),
    Condition("x264_crf51@640x360", 640, 360, _x264(51)),
    Condition("noise_0.1+x264_crf51@256x144", 256, 144, _x264(51), partial(add_noise, sigma=0.1)),
    Condition("noise_0.2+x264_crf51@128x72", 128, 72, _x264(51), partial(add_noise, sigma=0.2)),
    Condition("noise_0.05+x264_crf40@640x360", 640, 360, _x264(40), partial(add_noise, sigma=0.05)),
    Condition("blur_3+x264_crf51@256x144", 256, 144, _x264(51), partial(blur, sigma=3.0)),
    Condition("contrast_0.4+x264_crf44@384x216", 384, 216, _x264(44), partial(contrast, k=0.4)),
    Condition("brightness_+0.25+x264_crf44@384x216", 384, 216, _x264(44), partial(brightness, delta=0.25)),
    Condition("mjpeg_q31@384x216", 384, 216, _MJPEG_Q31),
    Condition("fast_motion_x2+x264_crf51@256x144", 256, 144, _x264(51), frame_step=2),
    Condition("av1_crf63@640x360", 640, 360, _av1(63)),
)
VIDEO_CONDITION_NAMES = tuple(c.name for c in VIDEO_CONDITIONS)


def prefiltered(clip: np.ndarray, fn: Callable[..., np.ndarray], seed: int) -> np.ndarray:
    """An image degradation on uint8 RGB frames [N, H, W, 3], as channels-first [N, 3, H, W] in [0, 1]."""
    x = clip.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    y = fn(x, np.random.default_rng(seed))
    return np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def vmaf_features(decoded: Path, ref: Path, width: int, height: int, n_frames: int) -> np.ndarray:
    """libvmaf's canonical-6 features per frame of decoded against ref (raw yuv420p), [n_frames, 6]."""
    log = decoded.with_suffix(".json")
    corpus._ffmpeg([*corpus._raw(width, height), "-i", str(decoded), *corpus._raw(width, height), "-i", str(ref),
                    "-lavfi", f"[0:v][1:v]libvmaf=log_fmt=json:log_path={log}:n_threads=1", "-f", "null", "-"])
    import json

    frames = json.loads(log.read_text())["frames"]
    if len(frames) != n_frames:
        raise RuntimeError(f"libvmaf scored {len(frames)} frames of {decoded.name}, expected {n_frames}")
    return np.array([[f["metrics"][k] for k in corpus._VMAF_KEYS] for f in frames], np.float32)


def condition_features(source: str, cond: Condition, clip: np.ndarray) -> np.ndarray:
    """Pre-filters, encodes and decodes the clip; its features against the clean clip."""
    clip = clip[:: cond.frame_step]
    dist = clip if cond.prefilter is None else prefiltered(clip, cond.prefilter, seed_of("video", source, cond.name))
    w, h = cond.width, cond.height
    with tempfile.TemporaryDirectory(prefix="tinyq_shift_") as tmp:
        ref, src, enc, dec = (Path(tmp) / n for n in ("ref.yuv", "src.yuv", "enc.mkv", "dec.yuv"))
        ref.write_bytes(corpus.rgb_to_yuv420p(clip))
        src.write_bytes(corpus.rgb_to_yuv420p(dist))
        corpus._ffmpeg([*corpus._raw(w, h), "-i", str(src), *cond.codec, str(enc)])
        corpus._ffmpeg(["-threads", "1", "-i", str(enc), "-f", "rawvideo", "-pix_fmt", "yuv420p", str(dec)])
        return vmaf_features(dec, ref, w, h, len(clip))


def feature_shift(sources: Sequence[str] = corpus.SPLITS["val"], conditions: Sequence[Condition] = VIDEO_CONDITIONS,
                  progress: Callable[[str], None] = lambda s: None) -> Dict[str, np.ndarray]:
    """{"features": [rows, 6]}: per source, per condition, its frames in order."""
    rows = []
    for source in sources:
        if corpus.split_of(source) != "val":
            raise ValueError(f"{source!r} is in the {corpus.split_of(source)} split; shift sets use only val")
        clips: Dict[Tuple[int, int], np.ndarray] = {}
        for cond in conditions:
            if (cond.width, cond.height) not in clips:
                clips[(cond.width, cond.height)] = corpus.make_clip(source, cond.width, cond.height)
            rows.append(condition_features(source, cond, clips[(cond.width, cond.height)]))
            progress(f"{source} {cond.name}")
    return {"features": np.concatenate(rows).astype(np.float32)}


def feature_labels(sources: Sequence[str] = corpus.SPLITS["val"],
                   conditions: Sequence[Condition] = VIDEO_CONDITIONS) -> List[str]:
    """The condition of each row of feature_shift's output."""
    return [c.name for _ in sources for c in conditions for _ in range(-(-corpus.N_FRAMES // c.frame_step))]


def build(model_dir: Path, model_id: str, inputs: Sequence[calibration.GraphInput], cache: Optional[Dict] = None,
          progress: Callable[[str], None] = lambda s: None) -> Dict[str, np.ndarray]:
    """A model's shift set: from the val photographs for a `features` model, else from its val set.

    Reads only the val set (layout.validation_path) and the val photographs. Raises
    ValueError for inputs with no recipe, calibration.CalibrationError for a bad val set."""
    names = [i.name for i in inputs]
    if names == ["features"]:
        cache = {} if cache is None else cache
        if "features" not in cache:
            cache["features"] = feature_shift(progress=progress)
        return dict(cache["features"])
    if "dist" not in names or not set(names) <= {"ref", "dist"}:
        raise ValueError(f"{model_id}: no shift recipe for inputs {names}: one of ['features'], ['dist'], ['ref', 'dist']")
    val = calibration.load_npz(layout.validation_path(model_dir, model_id), inputs, (calibration.TARGET_KEY,))
    return image_shift(model_id, {n: val[n] for n in names})
