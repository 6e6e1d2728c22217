"""Task metrics, in float64, without torch: PLCC, SROCC and RMSE against VMAF, PSNR for luma."""

from __future__ import annotations

import numpy as np


def plcc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def srocc(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()).statistic)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    d = np.asarray(a, np.float64).ravel() - np.asarray(b, np.float64).ravel()
    return float(np.sqrt(np.mean(d * d)))


def psnr(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample PSNR in dB for luma in [0, 1], with x clipped to the valid range."""
    x = np.clip(np.asarray(x, np.float64), 0, 1)
    mse = np.mean((x - np.asarray(ref, np.float64)) ** 2, axis=tuple(range(1, x.ndim)))
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def quality_metrics(prediction: np.ndarray, target: np.ndarray) -> dict:
    """A quality metric's agreement with the ground truth."""
    return {"plcc": plcc(prediction, target), "srocc": srocc(prediction, target), "rmse": rmse(prediction, target)}


def ssim(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample SSIM (scikit-image's, Gaussian-free 7x7 windows) for luma [N, 1, H, W] in [0, 1]."""
    from skimage.metrics import structural_similarity

    x = np.clip(np.asarray(x, np.float64), 0, 1)
    ref = np.asarray(ref, np.float64)
    return np.array([structural_similarity(a.reshape(a.shape[-2:]), b.reshape(b.shape[-2:]), data_range=1.0)
                     for a, b in zip(x, ref)])


def filter_metrics(restored: np.ndarray, degraded: np.ndarray, target: np.ndarray, with_ssim: bool = False) -> dict:
    """A restoration filter's mean per-sample PSNR before and after, and the gain; SSIM if asked."""
    before, after = psnr(degraded, target), psnr(restored, target)
    out = {"psnr_in_db": float(before.mean()), "psnr_out_db": float(after.mean()), "psnr_gain_db": float((after - before).mean())}
    if with_ssim:
        s_in, s_out = ssim(degraded, target), ssim(restored, target)
        out.update(ssim_in=float(s_in.mean()), ssim_out=float(s_out.mean()), ssim_gain=float((s_out - s_in).mean()))
    return out
