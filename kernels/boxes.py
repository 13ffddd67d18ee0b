"""Box and lambda sampling for CutMix/CMO/OTmix and ResizeMix/SMC (METHODS.md: CMO; SMC).

Everything runs on the requested device with an optional seeded ``torch.Generator`` and without
a Python loop over the batch. Boxes are int32 ``[B, 4]`` rows ``(x0, y0, x1, y1)``, half-open and
clipped to the image; ``lam`` is float32 ``[B]``, the weight of ``y_a`` (the background), always
recomputed from the actual box area (METHODS.md: Boxes and λ).
"""

from __future__ import annotations

import math

import torch

# Marsaglia-Tsang accepts >= 95% of proposals for shape >= 1; 16 proposals per sample leave a
# chance below 1e-20 that none is accepted (then the Gamma mean is used, see _log_gamma).
_GAMMA_PROPOSALS = 16


def _device_of(generator: torch.Generator | None, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _log_gamma(shape: float, n: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws of Gamma(shape, 1) in float64 (Marsaglia & Tsang 2000), vectorized and seeded,
    as (draws, their logs). For shape < 1 the draw is Gamma(shape+1)·U^(1/shape), which
    underflows to 0 for small shapes (α = 0.001: a quarter of the draws) while its log
    stays finite."""
    boost = shape < 1.0  # Gamma(a) = Gamma(a+1) * U^(1/a) for a < 1
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    k = _GAMMA_PROPOSALS
    z = torch.randn(k, n, generator=generator, device=device, dtype=torch.float64)  # [k, n]
    u = torch.rand(k, n, generator=generator, device=device, dtype=torch.float64)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    first = torch.argmax(ok.to(torch.int8), dim=0)  # [n] first accepted proposal (0 if none)
    draws = (d * v).gather(0, first[None]).squeeze(0)
    draws = torch.where(ok.any(dim=0), draws, torch.full_like(draws, a))
    if boost:
        u2 = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return draws * u2 ** (1.0 / shape), draws.log() + u2.log() / shape
    return draws, draws.log()


def sample_lam(batch_size: int, alpha: float, generator: torch.Generator | None = None, *,
               device=None) -> torch.Tensor:
    """lam0 ~ Beta(alpha, alpha), float32 [batch_size], on ``device`` (default: the generator's)."""
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    dev = _device_of(generator, device)
    if alpha == 1.0:  # Beta(1,1) is U(0,1): exact and cheaper
        return torch.rand(batch_size, generator=generator, device=dev, dtype=torch.float64).float()
    x, log_x = _log_gamma(alpha, batch_size, generator, dev)
    y, log_y = _log_gamma(alpha, batch_size, generator, dev)
    # x / (x + y); where both underflowed to 0 (small α), the same ratio from the logs
    return torch.where(x + y > 0, x / (x + y), torch.sigmoid(log_x - log_y)).float()


def _check_hw(H: int, W: int) -> None:
    for name, v in (("H", H), ("W", W)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _centres(n: int, H: int, W: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    cy = torch.randint(0, H, (n,), generator=generator, device=device)
    cx = torch.randint(0, W, (n,), generator=generator, device=device)
    return cy, cx


def _lam_from_boxes(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).to(torch.float64)
    return (1.0 - area / float(H * W)).clamp(0.0, 1.0).float()


def _broadcast(boxes: torch.Tensor, B: int, H: int, W: int):
    """boxes [n,4] with n in {1, B} -> (boxes int32 [B,4], lam float32 [B])."""
    boxes = boxes.to(torch.int32).expand(B, 4).contiguous()
    return boxes, _lam_from_boxes(boxes, H, W)


def cutmix_boxes(lam0: torch.Tensor, H: int, W: int, generator: torch.Generator | None = None, *,
                 per_sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix/CMO boxes from lam0 [B] (METHODS.md, CMO): s = sqrt(1-lam0), ch = floor(H s),
    cw = floor(W s), centre uniform on the pixel grid, sides cy -+ ch//2 clipped to [0, H] (x
    likewise with W).

    Returns (boxes int32 [B,4] (x0,y0,x1,y1), lam float32 [B] = 1 - area/(H W)) on lam0's device.
    ``per_sample=False``: every row gets the one box built from lam0[0] (the papers' code;
    METHODS.md: Boxes and λ).
    """
    if not isinstance(lam0, torch.Tensor) or lam0.ndim != 1 or not lam0.is_floating_point():
        raise ValueError("lam0 must be a 1-D floating tensor [B]")
    _check_hw(H, W)
    B = lam0.shape[0]
    if B and not per_sample:
        lam0 = lam0[:1]
    lam64 = lam0.to(torch.float64).clamp(0.0, 1.0)  # float64 like the reference numpy code
    s = torch.sqrt(1.0 - lam64)
    ch = torch.floor(H * s).long()  # [n] unclipped side = 2*(ch//2), may be 1 px short (see CMO)
    cw = torch.floor(W * s).long()
    cy, cx = _centres(lam64.shape[0], H, W, generator, lam0.device)
    y0 = (cy - ch // 2).clamp(0, H)
    y1 = (cy + ch // 2).clamp(0, H)
    x0 = (cx - cw // 2).clamp(0, W)
    x1 = (cx + cw // 2).clamp(0, W)
    return _broadcast(torch.stack([x0, y0, x1, y1], dim=1), B, H, W)


def resizemix_boxes(batch_size: int, H: int, W: int, generator: torch.Generator | None = None, *,
                    device=None, per_sample: bool = True,
                    scale: tuple[float, float] = (0.2, 0.8)) -> tuple[torch.Tensor, torch.Tensor]:
    """ResizeMix/SMC boxes (METHODS.md, SMC): lf = lo + (hi-lo) u, u ~ U(0,1);
    h = max(1, round(H sqrt(lf))), w = max(1, round(W sqrt(lf))); top ~ randint{0..H-h},
    left ~ randint{0..W-w}.

    Returns (boxes int32 [B,4] (x0,y0,x1,y1), lam float32 [B] = 1 - h w/(H W)): lam weights y_a,
    the background (SMC's own lambda weights the foreground; see METHODS.md: SMC).
    """
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    _check_hw(H, W)
    lo, hi = scale
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"scale must satisfy 0 <= lo <= hi <= 1, got {scale!r}")
    dev = _device_of(generator, device)
    n = batch_size if per_sample else min(batch_size, 1)
    f64 = torch.float64
    u = torch.rand(n, generator=generator, device=dev, dtype=f64)
    root = torch.sqrt(lo + (hi - lo) * u)
    h = torch.round(H * root).long().clamp(1, H)  # round half to even, like Python's round
    w = torch.round(W * root).long().clamp(1, W)
    r = torch.rand(2, n, generator=generator, device=dev, dtype=f64)
    top = torch.minimum(torch.floor(r[0] * (H - h + 1)).long(), H - h)  # uniform on {0..H-h}
    left = torch.minimum(torch.floor(r[1] * (W - w + 1)).long(), W - w)
    return _broadcast(torch.stack([left, top, left + w, top + h], dim=1), batch_size, H, W)
