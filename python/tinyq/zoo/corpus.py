"""The video-quality corpus: real photographs, synthetic camera motion, real codecs, real VMAF.

Each source photograph (bundled with scikit-image) becomes a short clip with a seeded pan and
zoom, at two resolutions. Each clip is encoded with x264, x265, AV1 (libaom) and VP9 at six
quality points by the ffmpeg bundled in imageio-ffmpeg, decoded, and scored against its
reference with that ffmpeg's libvmaf. Per frame the corpus keeps the canonical-6 features and
the VMAF score; per clip it keeps 48x48 reference and distorted luma patches from two frames,
each with its own VMAF (libvmaf on the patch's region) and its frame's VMAF.

Sources are split into train, val and soak by source, so no photograph is in two splits.
Every step is seeded and single-threaded, so the same command gives the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

FEATURES = ("adm2", "vif_scale0", "vif_scale1", "vif_scale2", "vif_scale3", "motion2")
_VMAF_KEYS = tuple(f"integer_{f}" for f in FEATURES)

# Real photographs bundled in scikit-image's wheel, by split. Synthetic test patterns
# (chessboard, color, horse, logo, phantom) are left out, and the stereo pair's right view too.
SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": (
        "astronaut", "chelsea", "coins", "grass", "hubble_deep_field", "microaneurysms",
        "moon", "motorcycle_left", "page", "retina", "rocket",
    ),
    "val": ("cell", "clock", "gravel", "text"),
    "soak": ("brick", "camera", "coffee", "immunohistochemistry"),
}
SPLIT_NAMES = ("train", "val", "soak")
SOURCES: Tuple[str, ...] = tuple(s for split in SPLIT_NAMES for s in SPLITS[split])

RESOLUTIONS: Tuple[Tuple[int, int], ...] = ((256, 144), (384, 216))
N_FRAMES = 12
FPS = 24
PATCH = 48
PATCH_FRAMES = (4, 10)
PATCHES_PER_FRAME = 2
# Patch corners sit on the 8-pixel grid that codec blocks share, so block edges fall in place.
PATCH_GRID = 8

# (ffmpeg encoder arguments, quality points). Single-threaded, so output bytes are reproducible.
CODECS: Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]] = {
    "x264": (("-c:v", "libx264", "-preset", "medium", "-threads", "1", "-crf", "{q}"), (18, 26, 32, 38, 44, 50)),
    "x265": (
        ("-c:v", "libx265", "-preset", "medium", "-x265-params", "pools=none:frame-threads=1:log-level=error", "-crf", "{q}"),
        (20, 28, 34, 40, 46, 51),
    ),
    "av1": (("-c:v", "libaom-av1", "-cpu-used", "8", "-threads", "1", "-row-mt", "0", "-b:v", "0", "-crf", "{q}"),
            (20, 32, 42, 50, 56, 63)),
    "vp9": (
        ("-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "8", "-threads", "1", "-row-mt", "0", "-b:v", "0", "-crf", "{q}"),
        (20, 32, 42, 50, 56, 63),
    ),
}
CODEC_NAMES = tuple(CODECS)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def load_source(name: str) -> np.ndarray:
    """The photograph as float32 RGB in [0, 255], at least 400 px on its short side."""
    import skimage.data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    if name == "motorcycle_left":
        img = skimage.data.stereo_motorcycle()[0]
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = gray2rgb(img)
    img = img[..., :3].astype(np.float32)
    if img.max() <= 1.0:
        img = img * 255.0
    short = min(img.shape[:2])
    if short < 400:
        scale = 400 / short
        shape = (round(img.shape[0] * scale), round(img.shape[1] * scale))
        img = resize(img, shape, order=3, anti_aliasing=False, preserve_range=True).astype(np.float32)
    return np.clip(img, 0, 255)


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def make_clip(source: str, width: int, height: int) -> np.ndarray:
    """A seeded pan-and-zoom clip over the photograph: uint8 RGB [N_FRAMES, height, width, 3]."""
    from skimage.transform import resize

    img = load_source(source)
    rng = np.random.default_rng(_seed("motion", source))
    sh, sw = img.shape[:2]
    aspect = width / height
    # Window width at frame 0 and its per-frame zoom; a pan velocity in source pixels per frame.
    w0 = min(sw, sh * aspect) * rng.uniform(0.55, 0.75)
    zoom = rng.uniform(0.975, 1.025)
    speed = rng.uniform(2.0, 6.0) * max(sw, sh) / 512
    angle = rng.uniform(0, 2 * np.pi)
    vx, vy = speed * np.cos(angle), speed * np.sin(angle)
    cx, cy = sw / 2 - vx * N_FRAMES / 2, sh / 2 - vy * N_FRAMES / 2
    frames = []
    for t in range(N_FRAMES):
        ww = w0 * zoom**t
        wh = ww / aspect
        x = float(np.clip(cx + vx * t - ww / 2, 0, sw - ww))
        y = float(np.clip(cy + vy * t - wh / 2, 0, sh - wh))
        crop = img[int(y) : int(y + wh), int(x) : int(x + ww)]
        frame = resize(crop, (height, width), order=1, anti_aliasing=True, preserve_range=True)
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return np.stack(frames)


def rgb_to_yuv420p(rgb: np.ndarray) -> bytes:
    """BT.601 limited-range YUV 4:2:0 planar bytes for [N, H, W, 3] uint8 RGB."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    n, h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, sub(u), sub(v))]
    return b"".join(b"".join(p[i].tobytes() for p in planes) for i in range(n))


def luma_of_yuv420p(data: bytes, width: int, height: int) -> np.ndarray:
    frame = width * height * 3 // 2
    n = len(data) // frame
    arr = np.frombuffer(data, np.uint8)[: n * frame].reshape(n, frame)
    return arr[:, : width * height].reshape(n, height, width).copy()


def grid_positions(seed: int, frames: Sequence[int], per_frame: int, size: int, width: int, height: int) -> List[Tuple[int, int, int]]:
    """(frame, y, x) corners of seeded size x size squares on the codec block grid, per_frame per frame."""
    rng = np.random.default_rng(seed)
    out = []
    for t in frames:
        for _ in range(per_frame):
            y = int(rng.integers(0, (height - size) // PATCH_GRID + 1)) * PATCH_GRID
            x = int(rng.integers(0, (width - size) // PATCH_GRID + 1)) * PATCH_GRID
            out.append((t, y, x))
    return out


def patch_positions(source: str, width: int, height: int) -> List[Tuple[int, int, int]]:
    """(frame, y, x) of each patch, the same for every distortion of a clip."""
    return grid_positions(_seed("patches", source, width, height), PATCH_FRAMES, PATCHES_PER_FRAME, PATCH, width, height)


@dataclass(frozen=True)
class Job:
    source: str
    width: int
    height: int
    codec: str
    quality: int


def _ffmpeg(args: Sequence[str]) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}")


def _raw(width: int, height: int) -> List[str]:
    return ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-r", str(FPS)]


def _patch_vmaf(decoded: Path, ref_yuv: Path, pos: List[Tuple[int, int, int]], width: int, height: int, stem: Path) -> np.ndarray:
    """VMAF of each patch's own region: libvmaf on the crop, read at the patch's frame."""
    n = len(pos)
    graph = [f"[0:v]split={n}" + "".join(f"[d{i}]" for i in range(n)), f"[1:v]split={n}" + "".join(f"[r{i}]" for i in range(n))]
    outputs: List[str] = []
    logs = [stem.with_name(f"{stem.name}_patch{i}.json") for i in range(n)]
    for i, (_, y, x) in enumerate(pos):
        graph.append(f"[d{i}]crop={PATCH}:{PATCH}:{x}:{y}[dc{i}]")
        graph.append(f"[r{i}]crop={PATCH}:{PATCH}:{x}:{y}[rc{i}]")
        graph.append(f"[dc{i}][rc{i}]libvmaf=log_fmt=json:log_path={logs[i]}:n_threads=1[o{i}]")
        outputs += ["-map", f"[o{i}]", "-f", "null", "-"]
    _ffmpeg([*_raw(width, height), "-i", str(decoded), *_raw(width, height), "-i", str(ref_yuv),
             "-filter_complex", ";".join(graph), *outputs])
    scores = []
    for (t, _, _), log in zip(pos, logs):
        scores.append(json.loads(log.read_text())["frames"][t]["metrics"]["vmaf"])
        log.unlink()
    return np.array(scores, np.float32)


def run_job(job: Job, ref_yuv: Path, workdir: Path) -> Dict[str, np.ndarray]:
    """Encodes, decodes and scores one (clip, codec, quality); returns its frames and patches."""
    args, _ = CODECS[job.codec]
    stem = workdir / f"{job.source}_{job.width}_{job.codec}_{job.quality}"
    encoded = stem.with_suffix(".mkv")
    decoded = stem.with_suffix(".yuv")
    log = stem.with_suffix(".json")
    _ffmpeg([*_raw(job.width, job.height), "-i", str(ref_yuv), *[a.format(q=job.quality) for a in args], str(encoded)])
    _ffmpeg(["-i", str(encoded), "-f", "rawvideo", "-pix_fmt", "yuv420p", str(decoded)])
    # Scoring raw against raw keeps frames aligned (container timestamps can shift them).
    _ffmpeg(
        [
            *_raw(job.width, job.height), "-i", str(decoded),
            *_raw(job.width, job.height), "-i", str(ref_yuv),
            "-lavfi", f"[0:v][1:v]libvmaf=log_fmt=json:log_path={log}:n_threads=1",
            "-f", "null", "-",
        ]
    )
    frames = json.loads(log.read_text())["frames"]
    pos = patch_positions(job.source, job.width, job.height)
    patch_vmaf = _patch_vmaf(decoded, ref_yuv, pos, job.width, job.height, stem)
    if len(frames) != N_FRAMES:
        raise RuntimeError(f"{job}: libvmaf scored {len(frames)} frames, expected {N_FRAMES}")
    features = np.array([[f["metrics"][k] for k in _VMAF_KEYS] for f in frames], np.float32)
    vmaf = np.array([f["metrics"]["vmaf"] for f in frames], np.float32)
    dist = luma_of_yuv420p(decoded.read_bytes(), job.width, job.height)
    patches = np.stack([dist[t, y : y + PATCH, x : x + PATCH] for t, y, x in pos])
    bitrate = encoded.stat().st_size * 8 * FPS / N_FRAMES
    for p in (encoded, decoded, log):
        p.unlink()
    return {
        "features": features,
        "vmaf": vmaf,
        "patches": patches,
        "patch_vmaf": patch_vmaf,
        "patch_frame_vmaf": vmaf[[t for t, _, _ in pos]],
        "bitrate": np.float32(bitrate),
    }


def _run_clip(source: str, width: int, height: int, codecs: Sequence[str], qualities: Optional[Sequence[int]]) -> List[Dict]:
    """All jobs of one clip: makes the reference once, then every codec and quality."""
    with tempfile.TemporaryDirectory(prefix="tinyq_corpus_") as tmp:
        work = Path(tmp)
        clip = make_clip(source, width, height)
        ref_yuv = work / "ref.yuv"
        ref_yuv.write_bytes(rgb_to_yuv420p(clip))
        ref_luma = luma_of_yuv420p(ref_yuv.read_bytes(), width, height)
        ref_patches = np.stack([ref_luma[t, y : y + PATCH, x : x + PATCH] for t, y, x in patch_positions(source, width, height)])
        results = []
        for codec in codecs:
            for q in qualities if qualities is not None else CODECS[codec][1]:
                r = run_job(Job(source, width, height, codec, q), ref_yuv, work)
                r.update(job=Job(source, width, height, codec, q), ref_patches=ref_patches)
                results.append(r)
        return results


def split_of(source: str) -> str:
    for split, names in SPLITS.items():
        if source in names:
            return split
    raise KeyError(f"{source!r} is in no split")


def tool_versions() -> Dict[str, str]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True).stdout
    first = out.splitlines()[0] if out else "unknown"
    return {"ffmpeg": first}


def build(
    sources: Sequence[str] = SOURCES,
    resolutions: Sequence[Tuple[int, int]] = RESOLUTIONS,
    codecs: Sequence[str] = CODEC_NAMES,
    qualities: Optional[Sequence[int]] = None,
    jobs: int = 1,
    progress: Callable[[str], None] = lambda s: None,
) -> Dict[str, np.ndarray]:
    """Builds the corpus arrays. The order of rows is fixed by the arguments, not by scheduling."""
    clips = [(s, w, h) for s in sources for (w, h) in resolutions]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run_clip, s, w, h, codecs, qualities) for s, w, h in clips]
            per_clip = []
            for i, f in enumerate(futures):
                per_clip.append(f.result())
                progress(f"clip {i + 1}/{len(clips)}: {clips[i][0]} {clips[i][1]}x{clips[i][2]}")
    else:
        per_clip = []
        for i, (s, w, h) in enumerate(clips):
            per_clip.append(_run_clip(s, w, h, codecs, qualities))
            progress(f"clip {i + 1}/{len(clips)}: {s} {w}x{h}")
    return assemble([r for clip in per_clip for r in clip])


def assemble(results: List[Dict]) -> Dict[str, np.ndarray]:
    src_index = {s: i for i, s in enumerate(SOURCES)}
    split_index = {s: i for i, s in enumerate(SPLIT_NAMES)}
    codec_index = {c: i for i, c in enumerate(CODEC_NAMES)}
    res_index = {r: i for i, r in enumerate(RESOLUTIONS)}
    frames: Dict[str, list] = {k: [] for k in ("features", "vmaf", "source", "split", "codec", "resolution", "quality", "frame", "clip")}
    patches: Dict[str, list] = {k: [] for k in ("dist", "ref", "vmaf", "frame_vmaf", "source", "split", "codec", "resolution", "quality", "clip")}
    for clip_id, r in enumerate(results):
        job: Job = r["job"]
        meta = {
            "source": src_index[job.source],
            "split": split_index[split_of(job.source)],
            "codec": codec_index[job.codec],
            "resolution": res_index[(job.width, job.height)],
            "quality": job.quality,
            "clip": clip_id,
        }
        frames["features"].append(r["features"])
        frames["vmaf"].append(r["vmaf"])
        frames["frame"].append(np.arange(N_FRAMES))
        for k, v in meta.items():
            frames[k].append(np.full(N_FRAMES, v))
        n = len(r["patches"])
        patches["dist"].append(r["patches"])
        patches["ref"].append(r["ref_patches"])
        patches["vmaf"].append(r["patch_vmaf"])
        patches["frame_vmaf"].append(r["patch_frame_vmaf"])
        for k, v in meta.items():
            patches[k].append(np.full(n, v))
    out: Dict[str, np.ndarray] = {
        "frame_features": np.concatenate(frames["features"]).astype(np.float32),
        "frame_vmaf": np.concatenate(frames["vmaf"]).astype(np.float32),
        "frame_index": np.concatenate(frames["frame"]).astype(np.int16),
        "patch_dist": np.concatenate(patches["dist"]).astype(np.uint8),
        "patch_ref": np.concatenate(patches["ref"]).astype(np.uint8),
        "patch_vmaf": np.concatenate(patches["vmaf"]).astype(np.float32),
        "patch_frame_vmaf": np.concatenate(patches["frame_vmaf"]).astype(np.float32),
    }
    for k in ("source", "split", "codec", "resolution", "quality", "clip"):
        out[f"frame_{k}"] = np.concatenate(frames[k]).astype(np.int16)
        out[f"patch_{k}"] = np.concatenate(patches[k]).astype(np.int16)
    out["meta"] = np.frombuffer(json.dumps(metadata(), sort_keys=True).encode(), np.uint8)
    return out


def metadata() -> Dict:
    return {
        "schema": "tinyq-vq-corpus-v1",
        "features": list(FEATURES),
        "sources": list(SOURCES),
        "splits": {k: list(v) for k, v in SPLITS.items()},
        "split_names": list(SPLIT_NAMES),
        "codecs": {k: {"args": list(a), "qualities": list(q)} for k, (a, q) in CODECS.items()},
        "codec_names": list(CODEC_NAMES),
        "resolutions": [list(r) for r in RESOLUTIONS],
        "frames": N_FRAMES,
        "fps": FPS,
        "patch": PATCH,
        "patch_frames": list(PATCH_FRAMES),
        "patches_per_frame": PATCHES_PER_FRAME,
        "patch_grid": PATCH_GRID,
    }


@dataclass
class Corpus:
    arrays: Dict[str, np.ndarray]

    @property
    def meta(self) -> Dict:
        return json.loads(bytes(self.arrays["meta"]).decode())

    def split_mask(self, prefix: str, split: str) -> np.ndarray:
        return self.arrays[f"{prefix}_split"] == SPLIT_NAMES.index(split)

    def frames(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """(features [N, 6] float32, vmaf [N] float32) of a split."""
        m = self.split_mask("frame", split)
        return self.arrays["frame_features"][m], self.arrays["frame_vmaf"][m]

    def patches(self, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reference, distorted) luma in [0, 1] as float32 [N, 1, P, P], and the patch's VMAF [N]."""
        m = self.split_mask("patch", split)
        ref = self.arrays["patch_ref"][m][:, None].astype(np.float32) / 255.0
        dist = self.arrays["patch_dist"][m][:, None].astype(np.float32) / 255.0
        return ref, dist, self.arrays["patch_vmaf"][m]


DEFAULT_PATH = Path("model") / "corpus" / "vq_corpus.npz"


def load(path: os.PathLike) -> Corpus:
    with np.load(path, allow_pickle=False) as z:
        return Corpus({k: z[k] for k in z.files})
