"""The restoration corpus: visible coding artefacts on the vq corpus's photographs.

The same seeded pan-and-zoom clips of the same photographs (tinyq.zoo.corpus), in the same
train/val/soak splits, are encoded by the bundled ffmpeg with codecs that have no in-loop filter
(MPEG-2, MPEG-4 part 2, MJPEG) or with it switched off (x264 without its deblocking filter), at
low quality points where blocking and ringing show. Pairs are (decoded luma, source luma)
64x64 windows on the 8-pixel block grid; every score is taken on the 48x48 centre, so a filter
sees 8 pixels of real context on each side, as it would inside a frame.

On the val and soak splits the corpus also holds ffmpeg's own post-processing filters (spp,
uspp, pp7, fspp, deblock) run on the whole decoded frame, with the decoder's quantiser table
exported to them. Each filter is swept over a grid of settings; the setting with the best mean
PSNR gain on the val split is kept for each filter, and only the kept settings' outputs are
stored. The soak split never takes part in that choice.

Every step is seeded and single-threaded, so the same command gives the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyq.judge.metrics import psnr
from tinyq.zoo import corpus
from tinyq.zoo.corpus import Job

PATCH = 48  # the scored centre
MARGIN = 8  # real context on each side of it
WINDOW = PATCH + 2 * MARGIN
# Frames patches are taken from, and patches per frame: many for training (the filter is
# data-bound), fewer where ffmpeg's filters also run.
FRAMES = {"train": (1, 3, 5, 7, 9, 11), "val": (3, 9), "soak": (3, 9)}
PATCHES_PER_FRAME = {"train": 4, "val": 4, "soak": 4}
_GOP = ("-g", "12", "-bf", "2")

# (ffmpeg encoder arguments, quality points), single-threaded for byte-stable output. The MPEG
# codecs' and MJPEG's -q:v is the quantiser scale (2 to 31, higher is coarser).
CODECS: Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]] = {
    "mpeg2": (("-c:v", "mpeg2video", "-threads", "1", *_GOP, "-q:v", "{q}"), (8, 14, 20)),
    "mpeg4": (("-c:v", "mpeg4", "-threads", "1", *_GOP, "-q:v", "{q}"), (8, 14, 20)),
    "mjpeg": (("-c:v", "mjpeg", "-threads", "1", "-strict", "unofficial", "-q:v", "{q}"), (8, 14, 20)),
    "x264_nodeblock": (
        ("-c:v", "libx264", "-preset", "medium", "-threads", "1", "-x264-params", "no-deblock=1", "-crf", "{q}"),
        (34, 42),
    ),
}
CODEC_NAMES = tuple(CODECS)

# ffmpeg's post-processing filters and the settings swept for each. qp=0 (the default) reads
# the quantiser the decoder exports; a fixed qp overrides it.
_QPS = (0, 2, 4, 6, 8, 11, 15, 20)
FILTERS: Dict[str, Tuple[str, ...]] = {
    "spp": tuple(f"spp=quality={q}:qp={qp}" for q in (3, 6) for qp in _QPS),
    "uspp": tuple(f"uspp=quality=3:qp={qp}" for qp in _QPS),
    "pp7": tuple(f"pp7=qp={qp}:mode={m}" for m in ("medium", "soft") for qp in _QPS),
    "fspp": tuple(f"fspp=quality=4:qp={qp}:strength={s}" for s in (-10, 0) for qp in _QPS),
    "deblock": tuple(
        f"deblock=filter={f}:block={b}:alpha={a}:beta={a}"
        for f in ("weak", "strong") for b in (8, 16) for a in (0.098, 0.3, 0.6)
    ),
}
FILTER_NAMES = tuple(FILTERS)
GRID: Tuple[Tuple[str, str], ...] = tuple((f, s) for f in FILTER_NAMES for s in FILTERS[f])

DEFAULT_PATH = Path("model") / "corpus" / "restoration_corpus.npz"


def patch_positions(source: str, width: int, height: int) -> List[Tuple[int, int, int]]:
    """(frame, y, x) of each window's corner, on the block grid; the same for every codec of a clip."""
    split = corpus.split_of(source)
    return corpus.grid_positions(corpus._seed("restoration-patches", source, width, height), FRAMES[split],
                                 PATCHES_PER_FRAME[split], WINDOW, width, height)


def crops(luma: np.ndarray, pos: Sequence[Tuple[int, int, int]], frame_of: Optional[Dict[int, int]] = None) -> np.ndarray:
    frame_of = frame_of or {}
    return np.stack([luma[frame_of.get(t, t), y : y + WINDOW, x : x + WINDOW] for t, y, x in pos])


def centre(x: np.ndarray) -> np.ndarray:
    """The scored 48x48 centre of [..., 64, 64] windows."""
    return x[..., MARGIN : MARGIN + PATCH, MARGIN : MARGIN + PATCH]


def _filter_graph(frames: Sequence[int], outputs: Sequence[Path]) -> List[str]:
    """One ffmpeg run: decode once, keep the patch frames, run every grid setting on them."""
    keep = "+".join(f"eq(n\\,{t})" for t in frames)
    parts = [f"[0:v]select='{keep}',split={len(GRID)}" + "".join(f"[s{i}]" for i in range(len(GRID)))]
    args: List[str] = []
    for i, ((_, setting), out) in enumerate(zip(GRID, outputs)):
        parts.append(f"[s{i}]{setting},format=yuv420p[o{i}]")
        args += ["-map", f"[o{i}]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "yuv420p", str(out)]
    return ["-filter_complex", ";".join(parts), *args]


def run_filters(encoded: Path, job: Job, pos: Sequence[Tuple[int, int, int]], work: Path) -> np.ndarray:
    """[len(GRID), n_patches, PATCH, PATCH] uint8: every grid setting's output on the windows' centres."""
    frames = sorted({t for t, _, _ in pos})
    outs = [work / f"filtered_{i}.yuv" for i in range(len(GRID))]
    corpus._ffmpeg(["-threads", "1", "-filter_threads", "1", "-filter_complex_threads", "1", "-export_side_data", "venc_params",
                    "-i", str(encoded), *_filter_graph(frames, outs)])
    frame_of = {t: i for i, t in enumerate(frames)}
    result = []
    for out in outs:
        luma = corpus.luma_of_yuv420p(out.read_bytes(), job.width, job.height)
        out.unlink()
        if len(luma) != len(frames):
            raise RuntimeError(f"{job}: a filter returned {len(luma)} frames, expected {len(frames)}")
        result.append(centre(crops(luma, pos, frame_of)))
    return np.stack(result)


def run_job(job: Job, ref_yuv: Path, work: Path, with_filters: bool) -> Dict[str, np.ndarray]:
    args, _ = CODECS[job.codec]
    encoded, decoded = work / "encoded.mkv", work / "decoded.yuv"
    corpus._ffmpeg([*corpus._raw(job.width, job.height), "-i", str(ref_yuv), *[a.format(q=job.quality) for a in args],
                    str(encoded)])
    corpus._ffmpeg(["-i", str(encoded), "-f", "rawvideo", "-pix_fmt", "yuv420p", str(decoded)])
    luma = corpus.luma_of_yuv420p(decoded.read_bytes(), job.width, job.height)
    if len(luma) != corpus.N_FRAMES:
        raise RuntimeError(f"{job}: decoded {len(luma)} frames, expected {corpus.N_FRAMES}")
    pos = patch_positions(job.source, job.width, job.height)
    out = {"dist": crops(luma, pos), "bitrate": np.float32(encoded.stat().st_size * 8 * corpus.FPS / corpus.N_FRAMES)}
    if with_filters:
        out["filtered"] = run_filters(encoded, job, pos, work)
    for p in (encoded, decoded):
        p.unlink()
    return out


def _run_clip(source: str, width: int, height: int) -> Dict[str, object]:
    """Every codec and quality of one clip, with the clip's reference patches."""
    with_filters = corpus.split_of(source) != "train"
    with tempfile.TemporaryDirectory(prefix="tinyq_restoration_") as tmp:
        work = Path(tmp)
        ref_yuv = work / "ref.yuv"
        ref_yuv.write_bytes(corpus.rgb_to_yuv420p(corpus.make_clip(source, width, height)))
        ref = crops(corpus.luma_of_yuv420p(ref_yuv.read_bytes(), width, height), patch_positions(source, width, height))
        jobs = [Job(source, width, height, c, q) for c in CODEC_NAMES for q in CODECS[c][1]]
        return {"ref": ref, "jobs": jobs, "results": [run_job(j, ref_yuv, work, with_filters) for j in jobs]}


def build(sources: Sequence[str] = corpus.SOURCES, jobs: int = 1, progress: Callable[[str], None] = lambda s: None) -> Dict[str, np.ndarray]:
    """The corpus arrays; row order is fixed by the arguments, not by scheduling."""
    clips = [(s, w, h) for s in sources for (w, h) in corpus.RESOLUTIONS]
    per_clip = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_clip, *c) for c in clips]
        for i, f in enumerate(futures):
            per_clip.append(f.result())
            progress(f"clip {i + 1}/{len(clips)}: {clips[i][0]} {clips[i][1]}x{clips[i][2]}")
    return assemble(per_clip)


def _gain(x: np.ndarray, dist: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return psnr(x / 255.0, ref / 255.0) - psnr(dist / 255.0, ref / 255.0)


def choose_settings(filtered: np.ndarray, dist: np.ndarray, ref: np.ndarray) -> Tuple[Dict[str, int], Dict[str, Dict[str, float]]]:
    """Per filter, the grid index with the best mean PSNR gain on these (val) rows, and every score.
    filtered holds centres, dist and ref whole windows."""
    dist, ref = centre(dist), centre(ref)
    scores = {f: {} for f in FILTER_NAMES}
    best: Dict[str, int] = {}
    for i, (family, setting) in enumerate(GRID):
        scores[family][setting] = round(float(_gain(filtered[i], dist, ref).mean()), 5)
        if family not in best or scores[family][setting] > scores[family][GRID[best[family]][1]]:
            best[family] = i
    return best, scores


def assemble(per_clip: List[Dict[str, object]]) -> Dict[str, np.ndarray]:
    rows: Dict[str, list] = {k: [] for k in ("dist", "ref_index", "source", "split", "codec", "quality", "resolution", "clip")}
    refs, filtered, filtered_rows, bitrates = [], [], [], []
    n_rows = 0
    for clip_id, clip in enumerate(per_clip):
        ref_offset = sum(len(r) for r in refs)
        refs.append(clip["ref"])
        for job, r in zip(clip["jobs"], clip["results"]):
            n = len(r["dist"])
            meta = {
                "source": corpus.SOURCES.index(job.source),
                "split": corpus.SPLIT_NAMES.index(corpus.split_of(job.source)),
                "codec": CODEC_NAMES.index(job.codec),
                "quality": job.quality,
                "resolution": corpus.RESOLUTIONS.index((job.width, job.height)),
                "clip": clip_id,
            }
            rows["dist"].append(r["dist"])
            rows["ref_index"].append(ref_offset + np.arange(n))
            for k, v in meta.items():
                rows[k].append(np.full(n, v))
            bitrates.append(r["bitrate"])
            if "filtered" in r:
                filtered.append(r["filtered"])
                filtered_rows.append(n_rows + np.arange(n))
            n_rows += n
    out: Dict[str, np.ndarray] = {"dist": np.concatenate(rows["dist"]).astype(np.uint8),
                                  "ref": np.concatenate(refs).astype(np.uint8),
                                  "ref_index": np.concatenate(rows["ref_index"]).astype(np.int32),
                                  "bitrate": np.array(bitrates, np.float32)}
    for k in ("source", "split", "codec", "quality", "resolution", "clip"):
        out[k] = np.concatenate(rows[k]).astype(np.int16)
    out.update(_baselines(out, np.concatenate(filtered, axis=1), np.concatenate(filtered_rows)))
    return out


def _baselines(out: Dict[str, np.ndarray], filtered: np.ndarray, rows: np.ndarray) -> Dict[str, np.ndarray]:
    """Chooses each filter's setting on the val rows and keeps only its output (val and soak rows)."""
    val = out["split"][rows] == corpus.SPLIT_NAMES.index("val")
    dist, ref = out["dist"][rows], out["ref"][out["ref_index"][rows]]
    best, scores = choose_settings(filtered[:, val], dist[val], ref[val])
    kept = {f"baseline_{f}": filtered[i] for f, i in best.items()}
    meta = {**metadata(), "baseline_settings": {f: GRID[i][1] for f, i in best.items()}, "baseline_val_gain_db": scores}
    return {"baseline_rows": rows.astype(np.int32), **kept,
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)}


def metadata() -> Dict:
    return {
        "schema": "tinyq-restoration-corpus-v1",
        "sources": list(corpus.SOURCES),
        "splits": {k: list(v) for k, v in corpus.SPLITS.items()},
        "split_names": list(corpus.SPLIT_NAMES),
        "codecs": {k: {"args": list(a), "qualities": list(q)} for k, (a, q) in CODECS.items()},
        "codec_names": list(CODEC_NAMES),
        "resolutions": [list(r) for r in corpus.RESOLUTIONS],
        "frames": {k: list(v) for k, v in FRAMES.items()},
        "patch": PATCH,
        "window": WINDOW,
        "patches_per_frame": dict(PATCHES_PER_FRAME),
        "filters": {k: list(v) for k, v in FILTERS.items()},
    }


@dataclass
class RestorationCorpus:
    arrays: Dict[str, np.ndarray]

    @property
    def meta(self) -> Dict:
        return json.loads(bytes(self.arrays["meta"]).decode())

    def mask(self, split: str) -> np.ndarray:
        return self.arrays["split"] == corpus.SPLIT_NAMES.index(split)

    def pairs(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """(decoded, source) luma windows in [0, 1] as float32 [N, 1, 64, 64]; scores use centre()."""
        m = self.mask(split)
        dist = self.arrays["dist"][m][:, None].astype(np.float32) / 255.0
        ref = self.arrays["ref"][self.arrays["ref_index"][m]][:, None].astype(np.float32) / 255.0
        return dist, ref

    def baseline(self, name: str, split: str) -> np.ndarray:
        """The filter's output at its val-chosen setting on the centres of pairs(split), in [0, 1]."""
        rows = self.arrays["baseline_rows"]
        keep = self.arrays["split"][rows] == corpus.SPLIT_NAMES.index(split)
        if not keep.any():
            raise KeyError(f"no {name} baseline rows in the {split} split (baselines cover val and soak)")
        return self.arrays[f"baseline_{name}"][keep][:, None].astype(np.float32) / 255.0

    def labels(self, split: str) -> List[str]:
        """'codec qQ' of each row of the split."""
        m = self.mask(split)
        return [f"{CODEC_NAMES[c]} q{q}" for c, q in zip(self.arrays["codec"][m], self.arrays["quality"][m])]


def load(path: os.PathLike) -> RestorationCorpus:
    with np.load(path, allow_pickle=False) as z:
        return RestorationCorpus({k: z[k] for k in z.files})
