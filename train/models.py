"""Classifiers: a backbone (x -> pooled features [B,D]) plus a linear or cosine head.

ResNet-32 is the CIFAR ResNet of He et al. 2016 (3 stages × 5 basic blocks, widths 16/32/64,
parameter-free "option A" shortcuts) as used by LDAM/CMO [cmo:models/resnet_cifar.py].
The cosine classifier ("NormedLinear") is LDAM's: logits = normalize(f)·normalize(W) ∈ [-1, 1]
(METHODS.md: Class groups).
resnet8/10/18 are small CIFAR-stem models for CPU runs; resnet50 and
resnext50_32x4d come from torchvision; ``timm:<name>`` uses timm when it is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.train.losses.base import ModelOutput


class NormedLinear(nn.Module):
    """Cosine classifier: logits[b,k] = <f_b/|f_b|, w_k/|w_k|> (LDAM's ``use_norm``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        # LDAM init: uniform, then every column renormalised to unit length.
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,D] -> [B,C]
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class _ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsample and zero-pad the new channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, option_a: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes) if option_a else nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem, no max-pool, stages of basic blocks, global average pool -> [B, widths[-1]]."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], option_a: bool):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, in_planes = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(_BasicBlock(in_planes, w, 2 if (i > 0 and j == 0) else 1, option_a))
                in_planes = w
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,D]
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


class Classifier(nn.Module):
    """backbone -> features [B,D] -> fc -> logits [B,C]; ``heads`` map features to extras."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 cosine_classifier: bool = False):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.fc = (NormedLinear(feature_dim, num_classes) if cosine_classifier
                   else nn.Linear(feature_dim, num_classes))
        self.heads = nn.ModuleDict()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        feats = self.backbone(x)
        extras = {name: head(feats) for name, head in self.heads.items()}
        return ModelOutput(self.fc(feats), feats, extras)


def _torchvision(name: str) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _timm(name: str) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model: {name!r} needs timm, which is not installed") from None
    net = timm.create_model(name, pretrained=False, num_classes=0)
    return net, int(net.num_features)


# name -> (backbone factory returning (module, feature_dim))
_CIFAR = {
    "resnet8": ((1, 1, 1), (16, 32, 64), True),
    "resnet20": ((3, 3, 3), (16, 32, 64), True),
    "resnet32": ((5, 5, 5), (16, 32, 64), True),
    "resnet10": ((1, 1, 1, 1), (64, 128, 256, 512), False),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), False),
}
_TORCHVISION = ("resnet50", "resnext50_32x4d", "resnet101", "resnet152", "wide_resnet50_2")
MODEL_NAMES = tuple(_CIFAR) + _TORCHVISION + ("timm:<name>",)


def build_model(name: str, num_classes: int, *, cosine_classifier: bool = False) -> Classifier:
    """A fresh, randomly initialised classifier; unknown names raise a one-line ValueError."""
    if name in _CIFAR:
        blocks, widths, option_a = _CIFAR[name]
        backbone = CifarResNet(blocks, widths, option_a)
        dim = backbone.out_dim
    elif name in _TORCHVISION:
        backbone, dim = _torchvision(name)
    elif name.startswith("timm:"):
        backbone, dim = _timm(name[5:])
    else:
        raise ValueError(f"model: unknown {name!r} (choose from {', '.join(MODEL_NAMES)})")
    return Classifier(backbone, dim, num_classes, cosine_classifier)
