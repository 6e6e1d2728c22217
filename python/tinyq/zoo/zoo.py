"""The shipped tiny-model zoo: architectures, I/O contracts and training settings.

The MLPs map the canonical-6 libvmaf features to VMAF and carry their feature scaler
(mean, std) and output scale inside the graph, so callers pass raw features. The CNNs take
luma in [0, 1] as [N, 1, H, W] with dynamic batch, height and width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tinyq.zoo.corpus import FEATURES

OPSET = 17
BATCH, HEIGHT, WIDTH = "batch", "height", "width"


class ScaledMlp(nn.Module):
    """(x - mean) / std -> MLP -> y * y_std + y_mean, all inside the exported graph."""

    def __init__(self, n_in: int, hidden: Sequence[int]):
        super().__init__()
        layers: List[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.zeros(n_in))
        self.register_buffer("input_std", torch.ones(n_in))
        self.register_buffer("output_mean", torch.zeros(1))
        self.register_buffer("output_std", torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.input_mean) / self.input_std
        return self.net(z) * self.output_std + self.output_mean


def _conv(c_in: int, c_out: int, stride: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]


def local_contrast_normalise(x: torch.Tensor, size: int = 7, c: float = 1.0 / 255) -> torch.Tensor:
    """MSCN coefficients, (x - local mean) / (local std + c), as in BRISQUE and Kang et al. 2014."""
    pool = nn.functional.avg_pool2d
    mu = pool(x, size, stride=1, padding=size // 2, count_include_pad=False)
    var = pool((x - mu) ** 2, size, stride=1, padding=size // 2, count_include_pad=False)
    return (x - mu) / (torch.sqrt(var + 1e-8) + c)


class NrMetric(nn.Module):
    """No-reference metric: distorted luma -> VMAF, fully convolutional with global pooling.

    It sees the luma and its local-contrast-normalised (MSCN) coefficients, computed in-graph.
    """

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(*_conv(2, 16), *_conv(16, 32, 2), *_conv(32, 32), *_conv(32, 64, 2), *_conv(64, 64))
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
        self.register_buffer("output_mean", torch.zeros(1))
        self.register_buffer("output_std", torch.ones(1))

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        x = torch.cat([dist - 0.5, local_contrast_normalise(dist) * 0.25], dim=1)
        pooled = self.trunk(x).mean(dim=(2, 3))
        return self.head(pooled) * self.output_std + self.output_mean


class FrPatch(nn.Module):
    """Full-reference patch metric: (reference, distorted) luma -> VMAF."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(*_conv(3, 16), *_conv(16, 32, 2), *_conv(32, 32), *_conv(32, 64, 2))
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
        self.register_buffer("output_mean", torch.zeros(1))
        self.register_buffer("output_std", torch.ones(1))

    def forward(self, ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        x = torch.cat([ref - 0.5, dist - 0.5, (ref - dist) * 8.0], dim=1)
        pooled = self.trunk(x).mean(dim=(2, 3))
        return self.head(pooled) * self.output_std + self.output_mean


class ResidualFilter(nn.Module):
    """Restoration filter: compressed luma -> restored luma (same shape), as input + residual."""

    def __init__(self, width: int = 32, depth: int = 3):
        super().__init__()
        layers = _conv(1, width)
        for _ in range(depth):
            layers += _conv(width, width)
        last = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(last.weight)  # starts as the identity: training can only add gain
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        return dist + self.body(dist - 0.5)


class HalfResFilter(nn.Module):
    """Restoration filter that works at half resolution: input + residual, same shape.

    A stride-2 4x4 convolution folds each 2x2 block of pixels into channels, a stack of 3x3
    convolutions works there (a 30-pixel receptive field, wide enough for 8x8 coding blocks and
    their ringing, at a quarter of the full-resolution cost), and DepthToSpace unfolds the
    residual. Height and width must be even, as they are in 4:2:0 video.
    """

    def __init__(self, width: int = 32, depth: int = 5):
        super().__init__()
        layers = [nn.Conv2d(1, width, 4, stride=2, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += _conv(width, width)
        for conv in layers[::2]:  # He initialisation, so the signal keeps its scale through the stack
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        last = nn.Conv2d(width, 4, 3, padding=1)
        nn.init.zeros_(last.weight)  # starts as the identity: training can only add gain
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last, nn.PixelShuffle(2))

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        return dist + self.body(dist - 0.5)


@dataclass(frozen=True)
class Io:
    name: str
    shape: Tuple[object, ...]  # ints, or BATCH / HEIGHT / WIDTH for dynamic dimensions


@dataclass(frozen=True)
class ModelSpec:
    id: str
    kind: str  # fr / nr / filter
    data: str  # "frames" (features -> VMAF), "patches" (vq corpus) or "restoration" (restoration corpus)
    inputs: Tuple[Io, ...]
    outputs: Tuple[Io, ...]
    arch: Dict[str, object]
    epochs: int
    lr: float
    batch_size: int
    description: str
    hidden: Tuple[int, ...] = field(default=())
    weight_decay: float = 0.0

    def build(self) -> nn.Module:
        name = self.arch["name"]
        if name == "mlp":
            return ScaledMlp(len(FEATURES), self.hidden)
        if name == "nr_cnn":
            return NrMetric()
        if name == "fr_patch_cnn":
            return FrPatch()
        if name == "residual_filter":
            return ResidualFilter()
        if name == "half_res_filter":
            return HalfResFilter(self.arch["width"], self.arch["depth"])
        raise KeyError(name)


def _mlp(mid: str, hidden: Tuple[int, ...], epochs: int) -> ModelSpec:
    return ModelSpec(
        id=mid,
        kind="fr",
        data="frames",
        inputs=(Io("features", (BATCH, len(FEATURES))),),
        outputs=(Io("vmaf", (BATCH, 1)),),
        arch={"name": "mlp", "layers": [len(FEATURES), *hidden, 1], "activation": "relu"},
        hidden=hidden,
        epochs=epochs,
        lr=3e-3,
        batch_size=256,
        description=f"MLP {'-'.join(map(str, [len(FEATURES), *hidden, 1]))}: canonical-6 libvmaf features -> VMAF",
    )


_LUMA = (BATCH, 1, HEIGHT, WIDTH)

SPECS: Dict[str, ModelSpec] = {
    s.id: s
    for s in (
        _mlp("vmaf_tiny_v2", (16, 8), epochs=400),
        _mlp("vmaf_tiny_v3", (32, 16), epochs=400),
        _mlp("vmaf_tiny_v4", (64, 32, 16), epochs=400),
        ModelSpec(
            id="nr_metric_v1",
            kind="nr",
            data="patches",
            inputs=(Io("dist", _LUMA),),
            outputs=(Io("vmaf", (BATCH, 1)),),
            arch={"name": "nr_cnn", "input": ["luma", "mscn_7x7"], "convs": [16, 32, 32, 64, 64], "head": [64, 32, 1],
                  "pool": "global_mean"},
            epochs=30,
            lr=1e-3,
            batch_size=32,
            weight_decay=0.01,
            description="No-reference CNN: distorted luma (any size) -> VMAF",
        ),
        ModelSpec(
            id="fr_patch_v1",
            kind="fr",
            data="patches",
            inputs=(Io("ref", _LUMA), Io("dist", _LUMA)),
            outputs=(Io("vmaf", (BATCH, 1)),),
            arch={"name": "fr_patch_cnn", "convs": [16, 32, 32, 64], "head": [64, 32, 1], "pool": "global_mean"},
            epochs=40,
            lr=1e-3,
            batch_size=64,
            weight_decay=0.01,
            description="Full-reference CNN: reference and distorted luma patches -> VMAF",
        ),
        ModelSpec(
            id="learned_filter_v1",
            kind="filter",
            data="patches",
            inputs=(Io("dist", _LUMA),),
            outputs=(Io("restored", _LUMA),),
            arch={"name": "residual_filter", "width": 32, "depth": 3, "residual": True},
            epochs=40,
            lr=1e-3,
            batch_size=32,
            description="Residual restoration CNN: compressed luma -> restored luma, same shape",
        ),
        ModelSpec(
            id="learned_filter_v2",
            kind="filter",
            data="restoration",
            inputs=(Io("dist", _LUMA),),
            outputs=(Io("restored", _LUMA),),
            arch={"name": "half_res_filter", "width": 32, "depth": 5, "residual": True, "down": "conv4x4_stride2",
                  "up": "depth_to_space_2", "even_height_width": True},
            epochs=40,
            lr=1e-3,
            batch_size=32,
            description="Residual deblocking CNN at half resolution: decoded luma (even height and width) -> restored luma",
        ),
    )
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def spec(model_id: str) -> ModelSpec:
    try:
        return SPECS[model_id]
    except KeyError:
        raise KeyError(f"unknown model {model_id!r}; known: {', '.join(SPECS)}") from None


def sidecar_shape(shape: Sequence[object]) -> List[int]:
    """Sidecar shapes are ints, -1 for a dynamic dimension."""
    return [d if isinstance(d, int) else -1 for d in shape]


def dynamic_axes(s: ModelSpec) -> Dict[str, Dict[int, str]]:
    return {io.name: {i: d for i, d in enumerate(io.shape) if isinstance(d, str)} for io in (*s.inputs, *s.outputs)}


def example_inputs(s: ModelSpec, batch: int = 2, size: int = 32) -> Tuple[torch.Tensor, ...]:
    out = []
    for io in s.inputs:
        dims = [batch if d == BATCH else size if d in (HEIGHT, WIDTH) else d for d in io.shape]
        out.append(torch.zeros(*dims))
    return tuple(out)


def describe(s: ModelSpec, model: Optional[nn.Module] = None) -> Dict[str, object]:
    model = model or s.build()
    return {"id": s.id, "kind": s.kind, "n_params": n_params(model), "arch": s.arch}
