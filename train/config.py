"""Run configuration: shipped TOML recipes, CLI overrides, the resolved ``RUN/config.toml``.

A recipe (``train/recipes/<name>.toml`` or any ``FILE.toml``) has the tables::

    extends = "cifar100-lt"      # optional: start from another recipe, then override
    [train]   model, epochs, batch_size, lr, momentum, wd, warmup, schedule, milestones, gamma,
              mixer, loss, reweight, drw_epoch, preset, image_size, precision, skip_corrupt, ...
    [mixer.<name>]  params of that mixer (only the chosen mixer's table is used)
    [loss.<name>]   params of that base loss (e.g. [loss.la] tau = 1.0)
    [aux.<name>]    params of an auxiliary term a mixer declares (e.g. [aux.smc] weight = 0.1)
    [loader]  threads, py_workers, prefetch, hw_decoder_load, cpu_decode, q_decode, images,
              q_cache_gb, q_cache_side: DALI's
              resources (they change the speed, not the samples, so a resumed run may change
              them; except q_decode/cpu_decode moving Q between DALI-drawn crops on nvJPEG
              and the mix plan's, README.md, Speed settings)

Values follow METHODS.md (CMO; Losses; recipe files cite them). CLI options override the recipe;
no config object travels below the trainer's builder.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from ltpipe.pipeline import values
from ltpipe.shards.bounded import MAX_DEPTH, DepthError, ParseError, parse_toml, read_toml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
TOML_MAX_BYTES = 1 << 20  # a recipe or RUN/config.toml: a few KB

# Defaults every run starts from; a recipe and the CLI override them.
DEFAULTS: dict[str, Any] = {
    "train": {
        "model": "resnet32", "epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
        "wd": 2e-4, "nesterov": False, "warmup": 5, "schedule": "step", "milestones": [160, 180],
        "gamma": 0.01, "mixer": "none", "loss": "ce", "reweight": "none", "drw_epoch": -1,
        "preset": "cifar", "image_size": 32, "precision": "bf16", "channels_last": True,
        "compile": False, "eval_every": 1, "ckpt_every": 0, "seed": 0, "device": "cpu",
        "compute_stream": "high",  # CUDA: the step's stream priority vs DALI's (cuda_stream.py)
        # corrupt samples: refused (false), or left out and counted in metrics.jsonl/final.json
        "skip_corrupt": False,
    },
    # threads / py_workers 0: this rank's share of the CPUs (build.py); hw_decoder_load: the
    # share of JPEGs nvJPEG sends to the hardware decoder (bench/e2e.py sweeps it)
    # cpu_decode: streams ("uniform", "minority") decoded on the CPU even on CUDA
    # q_decode: a planned Q stream as box tiles or whole images (auto: tiles where the CPU
    # decodes Q, as measured faster; pipeline/loader.py resolve_q_decode)
    # images: "normalized" by DALI, or "uint8" out of DALI and normalised on the training
    # device before the mixer (pipeline/normalize.py; the same input up to float rounding)
    # q_cache_gb / q_cache_side: Q's decoded cache per rank, GB ("auto": from the free memory,
    # 0: off) and the cached images' long side (pipeline/q_cache.py)
    "loader": {"threads": 0, "py_workers": 0, "prefetch": 3, "hw_decoder_load": 0.65,
               "cpu_decode": [], "q_decode": "auto", "images": "normalized",
               "q_cache_gb": "auto", "q_cache_side": 384},
    "mixer": {}, "loss": {}, "aux": {},
}
NAMED_TABLES = ("mixer", "loss", "aux")  # tables of [TABLE.NAME] tables, one per method
SCHEDULES = ("step", "cosine", "constant")
IMAGE_OUTPUTS = ("normalized", "uint8")
STREAM_PRIORITIES = ("high", "default")  # the step's CUDA stream (cuda_stream.py)
PRECISIONS = ("bf16", "fp16", "fp32")
# keys that may differ between a run and its resumption: speed and logging, never the samples
VOLATILE = frozenset({"device", "progress", "compute_stream", "loader", "ckpt_every",
                      "eval_every"})


class ConfigError(ValueError):
    """A recipe or option is invalid; the message names the file or option."""


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        return read_toml(path, TOML_MAX_BYTES, "recipe")
    except ParseError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable recipe ({exc.strerror or exc})") from None


def load_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict:
    """A recipe by shipped name or path, with ``extends`` chains merged (child wins)."""
    path = Path(name_or_path)
    if not name_or_path.endswith(".toml"):
        path = RECIPES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"recipe: unknown {name_or_path!r} (shipped: "
                              f"{', '.join(recipe_names())}; or give a FILE.toml)")
    elif not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    if str(path) in _seen:
        raise ConfigError(f"{path}: 'extends' cycle")
    doc = _read_toml(path)
    parent = doc.pop("extends", None)
    check_recipe(doc, path)
    if parent is None:
        return doc
    parent = str(parent)
    if parent.endswith(".toml") and not Path(parent).is_absolute():
        parent = str(path.parent / parent)  # a FILE.toml next to the recipe that extends it
    return merge(load_recipe(parent, _seen + (str(path),)), doc)


def check_recipe(doc: dict, path: Path) -> None:
    """A recipe file's own values, each error naming the file: [train] and [loader] keys and
    kinds, and every [mixer.NAME] / [loss.NAME] table, chosen or not, against its constructor."""
    from ltpipe.train.losses.aux import AUX_TERMS
    from ltpipe.train.losses.per_sample import BASE_LOSSES
    from ltpipe.train.mixers.registry import MIXERS
    from ltpipe.train.params import check_params

    try:
        check_tables(doc, allowed=tuple(DEFAULTS))
        check_finite(doc)
        check_train(merge(DEFAULTS["train"], doc.get("train", {})), source="[train] ")
        check_loader(merge(DEFAULTS["loader"], doc.get("loader", {})))
        for table, known, skip in (("mixer", MIXERS, ("env",)),
                                   ("loss", BASE_LOSSES, ("class_counts",)),
                                   ("aux", AUX_TERMS, ("env", "feature_dim"))):
            for name, params in doc.get(table, {}).items():
                if name not in known:
                    raise ConfigError(f"[{table}.{name}]: unknown {table} (choose from "
                                      f"{', '.join(known)})")
                check_params(f"[{table}.{name}]", _param_owner(table, name), params, skip=skip)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_tables(doc: dict, allowed: tuple[str, ...]) -> None:
    """Tables where tables go, in a recipe or a run's config.toml: each top-level key one of
    ``allowed`` and a table, and each [mixer.NAME], [loss.NAME], [aux.NAME] a table, so the
    checks and merges after it never meet a number where they index a table."""
    unknown = set(doc) - set(allowed)
    if unknown:
        raise ConfigError(f"unknown tables {sorted(unknown)} (allowed: {list(allowed)})")
    for key, value in doc.items():
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}]: expected a table, got {_short_repr(value)}")
    for key in NAMED_TABLES:
        for name, params in doc.get(key, {}).items():
            if not isinstance(params, dict):
                raise ConfigError(f"[{key}.{name}]: expected a table, got {_short_repr(params)}")


def check_run_config(doc: dict, path: Path) -> None:
    """A run's config.toml (what --resume and --m2m-classifier read), each error naming the file:
    the tables a recipe may have, plus [run] with the shard directory's path, and their values
    by a recipe's rules."""
    try:
        check_tables(doc, allowed=(*DEFAULTS, "run"))
        if "run" not in doc:
            raise ConfigError("[run]: missing (not a config.toml that ltpipe train wrote)")
        shards = doc["run"].get("shards")
        if not isinstance(shards, str) or not shards or "\0" in shards:
            raise ConfigError(f"[run] shards: must be the shard directory's path, got "
                              f"{_short_repr(shards)}")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    check_recipe({k: v for k, v in doc.items() if k != "run"}, path)


def _short_repr(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _param_owner(table: str, name: str):
    """The class whose constructor takes the params of ``[table.name]``."""
    import importlib

    from ltpipe.train.losses.aux import AUX_TERMS
    from ltpipe.train.losses.per_sample import BASE_LOSSES
    from ltpipe.train.mixers.registry import mixer_class

    if table == "mixer":
        return mixer_class(name)
    if table == "loss":
        return BASE_LOSSES[name]
    module, cls = AUX_TERMS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_finite(doc: dict, _prefix: str = "") -> None:
    """Every number in every table is finite and not subnormal: nan, inf or 5e-324 fails at
    the first step, or trains on nan, so it is an error naming the key (``[mixer.cutmix] alpha``)
    before anything runs."""
    from ltpipe.train.params import unusable

    for key, value in doc.items():
        if isinstance(value, dict):
            check_finite(value, f"{_prefix}.{key}" if _prefix else key)
        elif unusable(value):
            table = f"[{_prefix}] " if _prefix else ""
            raise ConfigError(f"{table}{key}: must be {unusable(value)}, got {value!r}")


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge: tables merge, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_scalar(text: str) -> Any:
    """A CLI value as a TOML scalar ("0.5" -> 0.5, "true" -> True, "[1,2]" -> [1,2]);
    anything that is not valid TOML is a plain string."""
    try:
        return parse_toml(f"v = {text}", "value")["v"]
    except DepthError:
        raise ConfigError(f"{text[:40]!r}: nested deeper than {MAX_DEPTH - 1} levels") from None
    except ParseError:
        return text


def parse_assignments(items: tuple[str, ...], option: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_scalar(value.strip())
    return out


def resolve(recipe: dict, train_overrides: dict, mixer_overrides: dict,
            loss_overrides: dict | None = None, loader_overrides: dict | None = None) -> dict:
    """DEFAULTS <- recipe <- CLI; returns the full config and checks the train/loader tables."""
    cfg = merge(DEFAULTS, recipe)
    cfg["train"].update({k: v for k, v in train_overrides.items() if v is not None})
    cfg["loader"].update(loader_overrides or {})
    mixer = cfg["train"]["mixer"]
    cfg["mixer"] = {mixer: {**cfg["mixer"].get(mixer, {}), **mixer_overrides}}
    loss = cfg["train"]["loss"]
    cfg["loss"] = {loss: {**cfg["loss"].get(loss, {}), **(loss_overrides or {})}}
    check_finite({k: cfg[k] for k in ("mixer", "loss", "aux")})
    check_train(cfg["train"])
    check_loader(cfg["loader"])
    return cfg


# [train] and [loader] values by their rules (pipeline/values.py, the rules the library's
# constructors check by too); names and lists are checked below
TRAIN_RULES = {
    "epochs": values.EPOCHS, "batch_size": values.integer(1), "image_size": values.IMAGE_SIDE,
    "eval_every": values.integer(1), "lr": values.number(0, values.MAX_LR),
    "wd": values.number(0, 1), "momentum": values.number(0, 1),
    "gamma": values.number(0, 1),  # the step schedule's decay factor
    "warmup": values.integer(0, values.MAX_EPOCHS, what="epochs"),
    "ckpt_every": values.integer(0, what="steps"), "seed": values.SEED,
    "nesterov": values.FLAG, "channels_last": values.FLAG, "compile": values.FLAG,
    "skip_corrupt": values.FLAG,
}
LOADER_RULES = {
    "threads": values.integer(0, values.MAX_THREADS, what="0: automatic"),
    "py_workers": values.integer(0, values.MAX_THREADS, what="0: automatic"),
    "prefetch": values.PREFETCH, "hw_decoder_load": values.PROB,
    "q_cache_gb": values.Q_CACHE_GB, "q_cache_side": values.Q_CACHE_SIDE,
}


def check_train(t: dict, source: str = "") -> None:
    """The [train] table; errors name the option (``--epochs``), or with ``source`` (a recipe's
    "[train] ") the key (``[train] epochs``)."""
    def name(key: str) -> str:
        return f"{source}{key}" if source else f"--{key.replace('_', '-')}"

    unknown = set(t) - set(DEFAULTS["train"]) - {"progress"}
    if unknown:
        raise ConfigError(f"[train]: unknown keys {sorted(unknown)} "
                          f"(allowed: {', '.join(DEFAULTS['train'])})")
    for key, rule in TRAIN_RULES.items():
        problem = rule.problem(t[key])
        if problem:
            raise ConfigError(f"{name(key)}: {problem}")
    drw = t["drw_epoch"]
    if not values.is_integer(drw) or not -1 <= drw <= values.MAX_EPOCHS:
        raise ConfigError(f"{name('drw_epoch')}: must be an epoch (-1: 4/5 of the run), got "
                          f"{drw!r}")
    milestones = t["milestones"]
    if not isinstance(milestones, list) or not all(
            values.is_integer(m) and 0 <= m <= values.MAX_EPOCHS for m in milestones):
        raise ConfigError(f"{name('milestones')}: must be a list of epochs, got {milestones!r}")
    for key in ("model", "mixer", "loss", "reweight", "preset"):
        if not isinstance(t[key], str):
            raise ConfigError(f"{name(key)}: must be a name, got {t[key]!r}")
    if t["schedule"] not in SCHEDULES:
        raise ConfigError(f"{name('schedule')}: unknown {t['schedule']!r} "
                          f"(choose from {', '.join(SCHEDULES)})")
    if t["precision"] not in PRECISIONS:
        raise ConfigError(f"{name('precision')}: unknown {t['precision']!r} "
                          f"({', '.join(PRECISIONS)})")
    if t["device"] not in ("cpu", "cuda"):
        raise ConfigError(f"{name('device')}: must be cpu or cuda, got {t['device']!r}")
    if t["compute_stream"] not in STREAM_PRIORITIES:
        raise ConfigError(f"{name('compute_stream')}: must be one of "
                          f"{', '.join(STREAM_PRIORITIES)}, got {t['compute_stream']!r}")


def check_loader(table: dict) -> None:
    unknown = set(table) - set(DEFAULTS["loader"])
    if unknown:
        raise ConfigError(f"[loader]: unknown keys {sorted(unknown)} "
                          f"(allowed: {', '.join(DEFAULTS['loader'])})")
    for key, rule in LOADER_RULES.items():
        problem = rule.problem(table[key])
        if problem:
            raise ConfigError(f"[loader] {key}: {problem}")
    names = table["cpu_decode"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
            not set(names) <= {"uniform", "minority", "balanced"}:
        raise ConfigError(f"[loader] cpu_decode: a list of stream names (uniform, minority, "
                          f"balanced), got {names!r}")
    from ltpipe.pipeline.loader import Q_DECODES  # the loader owns the modes

    if table["q_decode"] not in Q_DECODES:
        raise ConfigError(f"[loader] q_decode: must be one of {', '.join(Q_DECODES)}, got "
                          f"{table['q_decode']!r}")
    if table["images"] not in IMAGE_OUTPUTS:
        raise ConfigError(f"[loader] images: must be one of {', '.join(IMAGE_OUTPUTS)}, got "
                          f"{table['images']!r}")


def check_chosen_params(cfg: dict) -> None:
    """The chosen mixer's, loss's and aux terms' parameters (a recipe's, then the CLI's) against
    their constructors, before anything runs: the same checks a recipe's tables get."""
    from ltpipe.train.losses.aux import AUX_TERMS
    from ltpipe.train.losses.per_sample import BASE_LOSSES
    from ltpipe.train.params import check_params

    t = cfg["train"]
    for table, known, name in (("loss", BASE_LOSSES, t["loss"]),
                               *(("aux", AUX_TERMS, n) for n in cfg.get("aux", {}))):
        if name not in known:
            raise ConfigError(f"{table}: unknown {name!r} (choose from {', '.join(known)})")
    for table, name, skip in (("mixer", t["mixer"], ("env",)),
                              ("loss", t["loss"], ("class_counts",))):
        check_params(f"{table} {name!r}", _param_owner(table, name),
                     cfg[table].get(name, {}), skip=skip)
    for name, params in cfg.get("aux", {}).items():
        check_params(f"aux {name!r}", _param_owner("aux", name), params,
                     skip=("env", "feature_dim"))


def as_used(cfg: dict) -> dict:
    """The config as the run uses it, which is what config.toml and the checkpoint record: the
    CPU trains in fp32 on no CUDA stream, so a CPU run records precision "fp32" and no
    compute_stream (a resume on CUDA takes the default stream priority)."""
    out = copy.deepcopy(cfg)
    if out["train"].get("device") == "cpu":
        out["train"]["precision"] = "fp32"
        out["train"].pop("compute_stream", None)
    return out


def changes(saved: dict, new: dict) -> list[str]:
    """``differences`` of a resumed run, with both configs as used on the new run's device: a
    CPU run recorded before ``as_used`` (precision "bf16") still resumes on the CPU, and a CUDA
    run may still resume on the CPU (which trains in fp32 whatever the precision)."""
    device = new.get("train", {}).get("device")
    if not isinstance(saved.get("train"), dict) or device is None:
        return differences(saved, new)
    moved = {**saved, "train": {**saved["train"], "device": device}}
    return differences(as_used(moved), as_used(new))


def differences(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ (volatile keys ignored): resume must not change a run."""
    out = []
    for key in sorted(set(saved) | set(new)):
        if key in VOLATILE or key == "run":
            continue
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in differences(a, b)]
        elif a != b:
            out.append(f"{key} ({a!r} -> {b!r})")
    return out


# --- a small TOML writer for the resolved config (scalars, lists, nested tables) ---

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        # JSON's escapes are TOML's (control characters as \uXXXX), except that TOML also
        # refuses a raw DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"config: cannot write {type(v).__name__} to TOML")


def to_toml(doc: dict, _prefix: str = "") -> str:
    lines, tables = [], []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{_prefix}{key}"
        has_scalars = any(not isinstance(v, dict) for v in value.values())
        if has_scalars or not value:
            out += f"\n[{name}]\n"
        out += to_toml(value, f"{name}.")
    return out
