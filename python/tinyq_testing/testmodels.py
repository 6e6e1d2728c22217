"""Models a new user brings, made the way users make them, for the bring-your-own-model tests.

  - a CNN exported by torch's default exporter (dynamo=True), dynamic batch;
  - the same CNN with its batch fixed at 1 (dynamo=True without dynamic shapes does that);
  - a two-input image-to-image net with a ConvTranspose decoder, by the legacy exporter
    (dynamo=False);
  - an skl2onnx MLPRegressor at opset 21;
  - a siamese CNN (two inputs through one shared backbone, legacy exporter), 48 calibration samples;
  - an skl2onnx MLPClassifier with its ZipMap output, judged on integer labels;
  - a 1-channel digits classifier CNN by torch's default exporter (scikit-learn's 8x8 digits,
    upsampled to 32x32), for the kernel benchmark (//python:bench_user_cnn).
Each is fitted briefly on the real corpus (model/corpus/vq_corpus.npz), so its outputs vary the way
a trained model's do; fit() is seeded and single-threaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np

from tinyq.zoo import corpus

CORPUS = corpus.DEFAULT_PATH


def patches(split: str, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference, distorted, vmaf) for the first n patches of a corpus split; luma in [0, 1]."""
    ref, dist, vmaf = corpus.load(CORPUS).patches(split)
    return ref[:n], dist[:n], vmaf[:n].astype(np.float32)


def features(split: str, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """(canonical-6 features, vmaf) for the first n frames of a corpus split."""
    x, y = corpus.load(CORPUS).frames(split)
    return x[:n].astype(np.float32), y[:n].astype(np.float32)


def _torch():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return torch


def contrast(luma: np.ndarray) -> np.ndarray:
    """Each patch's luma standard deviation [N]: a no-reference target a tiny CNN learns in seconds
    (the corpus's patch VMAF is beyond it: trained on that, its outputs barely vary)."""
    return luma.std(axis=tuple(range(1, luma.ndim))).astype(np.float32)


def nr_cnn():
    """Distorted luma [N, 1, H, W] -> score [N, 1]."""
    torch = _torch()
    nn = torch.nn

    class NrCnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.head = nn.Linear(16, 1)

        def forward(self, image):
            h = torch.relu(self.c2(torch.relu(self.c1(image))))
            return self.head(h.mean(dim=(2, 3)))

    return NrCnn()


def two_input_unet():
    """Reference and distorted luma [N, 1, H, W] -> a difference map [N, 1, H, W]; H, W even."""
    torch = _torch()
    nn = torch.nn

    class TwoInputUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(2, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.out = nn.Conv2d(16, 1, 3, padding=1)

        def forward(self, ref, dist):
            e = torch.relu(self.enc(torch.cat([ref, dist], dim=1)))
            u = torch.relu(self.up(torch.relu(self.down(e))))
            return self.out(torch.cat([e, u], dim=1))

    return TwoInputUNet()


def siamese_cnn():
    """Reference and distorted luma through one shared backbone -> |feature difference| score [N, 1]:
    every backbone weight is read twice (shared initialisers in the export)."""
    torch = _torch()
    nn = torch.nn

    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                          nn.ReLU())
            self.head = nn.Linear(16, 1)

        def forward(self, ref, dist):
            a, b = self.backbone(ref).mean(dim=(2, 3)), self.backbone(dist).mean(dim=(2, 3))
            return self.head((a - b).abs())

    return Siamese()


def sklearn_classifier(x: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """An MLPClassifier converted by skl2onnx with its default ZipMap output (label, probabilities)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x, labels)
    onx = to_onnx(clf, initial_types=[("features", FloatTensorType([None, x.shape[1]]))], target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def standardise(y: np.ndarray) -> np.ndarray:
    """(y - mean) / std as float32 [N, 1]: a target small nets fit in a few hundred steps."""
    return ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)


def fit(module, inputs: Sequence[np.ndarray], target: np.ndarray, steps: int = 300, lr: float = 3e-3):
    """Seeded Adam steps of MSE on batches of 32; returns the module in eval mode."""
    torch = _torch()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    y = torch.from_numpy(np.ascontiguousarray(target))
    rng = np.random.default_rng(0)
    module.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(y), size=min(32, len(y)), replace=False))
        loss = torch.nn.functional.mse_loss(module(*[x[idx] for x in xs]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


def export_torch(module, example: Dict[str, np.ndarray], outputs: Sequence[str], path: Path, *, dynamo: bool,
                 dynamic_batch: bool) -> Path:
    """torch.onnx.export as a user calls it; example maps forward()'s argument names to arrays."""
    torch = _torch()
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example.values())
    names = list(example)
    if dynamo:
        shapes = {n: {0: torch.export.Dim("batch")} for n in names} if dynamic_batch else None
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, output_names=list(outputs),
                          dynamic_shapes=shapes)
    else:
        axes = {n: {0: "batch"} for n in [*names, *outputs]} if dynamic_batch else None
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=list(outputs),
                          dynamic_axes=axes, opset_version=17)
    return path


def sklearn_mlp(x: np.ndarray, y: np.ndarray, path: Path, opset: int = 21) -> Path:
    """An MLPRegressor on the features, converted by skl2onnx at the given opset; input 'features'."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPRegressor

    reg = MLPRegressor(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0).fit(x, y)
    onx = to_onnx(reg, initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
                  target_opset={"": opset, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def quality_class(vmaf: np.ndarray) -> np.ndarray:
    """VMAF in three classes (below 40, 40 to 70, above 70): integer labels for a classifier."""
    return np.digitize(vmaf, [40.0, 70.0]).astype(np.int64)


class UserModel(NamedTuple):
    path: Path
    kind: str
    calibration: Dict[str, np.ndarray]  # train split
    soak: Dict[str, np.ndarray]  # held-out split, with "target" where the model predicts one


def user_models(d: Path) -> Dict[str, UserModel]:
    """The bring-your-own-model issues' models, fitted and exported into d, with real data."""
    ref, dist, _ = patches("train", 256)
    sref, sdist, _ = patches("soak", 96)
    x, y = features("train", 1000)
    sx, sy = features("soak", 300)
    cnn = fit(nr_cnn(), [dist], standardise(contrast(dist)), lr=1e-2)
    unet = fit(two_input_unet(), [ref, dist], ref - dist)
    siamese = fit(siamese_cnn(), [ref, dist], standardise(contrast(ref - dist)), lr=1e-2)
    labels = quality_class(y)
    return {
        "cnn_dynamo": UserModel(export_torch(cnn, {"image": dist[:2]}, ["score"], d / "cnn_dynamo.onnx", dynamo=True,
                                             dynamic_batch=True), "nr", {"image": dist}, {"image": sdist, "target": contrast(sdist)}),
        "cnn_batch1": UserModel(export_torch(cnn, {"image": dist[:1]}, ["score"], d / "cnn_batch1.onnx", dynamo=True,
                                             dynamic_batch=False), "nr", {"image": dist}, {"image": sdist, "target": contrast(sdist)}),
        "unet_legacy": UserModel(export_torch(unet, {"ref": ref[:2], "dist": dist[:2]}, ["diff"], d / "unet_legacy.onnx",
                                              dynamo=False, dynamic_batch=True), "fr", {"ref": ref, "dist": dist},
                                 {"ref": sref, "dist": sdist}),
        "skl_mlp_opset21": UserModel(sklearn_mlp(x, y, d / "skl_mlp_opset21.onnx"), "fr", {"features": x[:256]},
                                     {"features": sx, "target": sy}),
        # 48 calibration samples: not a multiple of the calibration batch (Percentile once failed on it).
        "siamese": UserModel(export_torch(siamese, {"ref": ref[:2], "dist": dist[:2]}, ["score"], d / "siamese.onnx",
                                          dynamo=False, dynamic_batch=True), "fr", {"ref": ref[:48], "dist": dist[:48]},
                             {"ref": sref, "dist": sdist}),
        "skl_classifier_zipmap": UserModel(sklearn_classifier(x, labels, d / "skl_classifier_zipmap.onnx"), "classifier",
                                           {"features": x[:256]}, {"features": sx, "target": quality_class(sy)}),
    }


DIGITS_SIDE = 32


def digits() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's handwritten digits, upsampled to DIGITS_SIDE (bilinear), in [0, 1]: {split:
    (images [N, 1, 32, 32], labels [N])}, a seeded shuffle split into train 1000, val 400, soak 397."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    d = load_digits()
    images = zoom(d.images / 16.0, (1, DIGITS_SIDE / 8, DIGITS_SIDE / 8), order=1).clip(0, 1).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    cuts = {"train": order[:1000], "val": order[1000:1400], "soak": order[1400:]}
    return {k: (images[i], d.target[i].astype(np.int64)) for k, i in cuts.items()}


def _fit_classifier(net, train: Tuple[np.ndarray, np.ndarray], steps: int):
    """Seeded Adam on cross-entropy, batches of 64; the module in eval mode."""
    torch = _torch()
    x, y = (torch.from_numpy(a) for a in train)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(y), size=64, replace=False))
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def digits_cnn(train: Tuple[np.ndarray, np.ndarray], steps: int = 800):
    """A user's small CNN: Conv(1->16)-MaxPool-Conv(16->32)-MaxPool-Conv(32->32)-mean-Linear(32->10),
    fitted with seeded Adam on cross-entropy; logits [N, 10]."""
    torch = _torch()
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return _fit_classifier(net, train, steps)


def mobilenet_digits(train: Tuple[np.ndarray, np.ndarray], steps: int = 400):
    """A MobileNetV2-style digits classifier: a stem conv, then inverted residual blocks (1x1 expand,
    3x3 depthwise, 1x1 project) with BatchNorm, ReLU6 and Hardswish, mean-pooled into Linear(32->10);
    fitted with seeded Adam on cross-entropy; logits [N, 10]."""
    torch = _torch()
    nn = torch.nn

    def block(cin, cout, stride, act):
        mid = 4 * cin
        return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act(),
                             nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), act(),
                             nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
            self.b1, self.b2, self.b3 = block(16, 24, 2, nn.ReLU6), block(24, 24, 1, nn.Hardswish), block(24, 32, 2, nn.Hardswish)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = self.b1(self.stem(x))
            x = x + self.b2(x)
            return self.head(self.b3(x).mean((2, 3)))

    torch.manual_seed(0)
    net = Net()
    return _fit_classifier(net, train, steps)
