"""Auxiliary loss terms added to the base loss (SMC's contrastive term, train/METHODS.md, SMC).

An aux term is an ``nn.Module`` built as ``Cls(env: MixerEnv, feature_dim: int, **params)`` with
``weight: float``, ``head_name: str | None``, ``make_head() -> nn.Module | None`` (the trainer puts
the head into ``model.heads[head_name]`` before the optimizer exists, so it is trained and
checkpointed) and ``forward(out: ModelOutput, mixed: MixedBatch, ctx: StepContext) -> scalar``.
A mixer lists the terms it needs in its ``aux_terms`` class attribute.
"""

from __future__ import annotations

import importlib

from torch import nn

# name -> "module:Class", imported on first use.
AUX_TERMS: dict[str, str] = {
    "smc": "ltpipe.train.losses.smc:SMCLoss",
}


def build_aux_term(name: str, env, feature_dim: int, **params) -> nn.Module:
    if name not in AUX_TERMS:
        raise ValueError(f"aux term: unknown {name!r} (choose from {', '.join(AUX_TERMS)})")
    module, cls = AUX_TERMS[name].split(":")
    term_cls = getattr(importlib.import_module(module), cls)
    try:
        return term_cls(env, feature_dim, **params)
    except TypeError as exc:
        raise ValueError(f"aux term {name!r}: bad parameter ({exc})") from None
