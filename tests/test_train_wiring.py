"""What the trainer builds from the config: the Q loader's r is the mixer's fg_r (METHODS.md, The
meaning of r), and an empty class is a build-time error when anything uses the counts
(METHODS.md, Empty classes)."""

import pytest
import torch

from ltpipe.train import build
from ltpipe.train.config import load_recipe, resolve
from ltpipe.train.dist import DistInfo
from ltpipe.train.trainer import Trainer

CPU = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


class LoaderCalled(Exception):
    """Raised by the spy in place of building the train loader: the Trainer stops there."""


def train_loader_args(monkeypatch, shards, tmp_path, recipe, mixer, mixer_params):
    """The keyword arguments the Trainer passes to make_loader for the train split, with the
    streams and r the loader resolves from the mixer it is given (one declaration)."""
    from ltpipe.pipeline import loader

    def spy(shards, split="train", **kwargs):
        raise LoaderCalled(kwargs)

    monkeypatch.setattr(loader, "make_loader", spy)
    cfg = resolve(load_recipe(recipe), {"mixer": mixer, "device": "cpu", "batch_size": 8},
                  mixer_params)
    with pytest.raises(LoaderCalled) as stop:
        Trainer(cfg, shards, tmp_path / "run", CPU, progress=False)
    args = dict(stop.value.args[0])
    assert "streams" not in args and "r" not in args  # only the mixer declares them
    args["streams"], args["r"] = loader.declared_streams(args["mixer"], None, None)
    return args


@pytest.mark.parametrize("recipe,mixer,params,r", [
    ("synthetic", "cmo", {}, 0.0),  # the recipe's fg_r = 0 (METHODS.md: The meaning of r)
    ("synthetic", "cmo", {"fg_r": 1.0}, 1.0),  # --fg-r 1 overrides it
    ("synthetic-smc", "smc", {}, 0.0),
    ("synthetic-otmix", "otmix", {"fg_r": 0.5}, 0.5),
    ("synthetic", "ros", {}, 0.0),
])
def test_trainer_builds_the_q_stream_with_the_mixers_fg_r(monkeypatch, tiny_shards, tmp_path,
                                                          recipe, mixer, params, r):
    """The train loader's Q stream draws with r = the mixer's fg_r, not the loader's 1."""
    args = train_loader_args(monkeypatch, tiny_shards, tmp_path, recipe, mixer, params)
    assert "minority" in args["streams"] and args["r"] == r


def test_trainer_leaves_r_to_the_loader_for_a_mixer_without_fg_r(monkeypatch, tiny_shards,
                                                                 tmp_path):
    args = train_loader_args(monkeypatch, tiny_shards, tmp_path, "synthetic", "none", {})
    assert args["streams"] == ("uniform",) and args["r"] == 1.0  # the loader's default


def test_the_train_loader_gets_the_mixers_plan(monkeypatch, tiny_shards, tmp_path):
    """CMO declares a mix plan, so its Q stream decodes only the boxes it pastes."""
    args = train_loader_args(monkeypatch, tiny_shards, tmp_path, "synthetic", "cmo", {})
    assert args["mixer"].mix_plan is not None


def train_table(mixer="none", loss="ce", reweight="none"):
    return resolve({}, {"mixer": mixer, "loss": loss, "reweight": reweight}, {})["train"]


@pytest.mark.parametrize("mixer,loss,reweight", [
    ("none", "ldam", "none"), ("none", "bs", "none"), ("none", "la", "none"),
    ("cutmix", "ce", "drw"), ("none", "focal", "inverse"),
    ("cmo", "ce", "none"), ("ros", "ce", "none"), ("smc", "ce", "none"), ("otmix", "ce", "none"),
    ("m2m", "ce", "none"),
])
def test_an_empty_class_is_a_build_error_when_the_counts_are_used(mixer, loss, reweight):
    """n_k = 0 raises at build time (make_env, the trainer's first build step), naming the
    class and the shards, when the loss, the re-weighting or a Q stream reads the counts."""
    with pytest.raises(ValueError, match=r"^/data/lt: class 1 has no training samples") as err:
        build.make_env(train_table(mixer, loss, reweight), torch.tensor([5, 0, 3]), "/data/lt", CPU)
    assert "\n" not in str(err.value) and "METHODS.md, empty classes" in str(err.value)


@pytest.mark.parametrize("mixer,loss", [("none", "ce"), ("cutmix", "focal"), ("mixup", "ce"),
                                        ("remix", "ce"), ("resizemix", "ce")])
def test_an_empty_class_is_fine_when_nothing_uses_the_counts(mixer, loss):
    env = build.make_env(train_table(mixer, loss), torch.tensor([5, 0, 3]), "/data/lt", CPU)
    assert env.class_counts.tolist() == [5, 0, 3]


def test_several_empty_classes_are_counted_in_the_message():
    with pytest.raises(ValueError, match=r"class 0 \(and 1 more\) has no training samples, and "
                                         r"loss 'ldam' and reweight 'drw' use the class counts"):
        build.make_env(train_table("none", "ldam", "drw"), torch.tensor([0, 4, 0]), "s", CPU)


def test_a_mixed_prior_without_a_mixer_that_declares_one_is_a_build_error():
    """Before any step: the loss would otherwise raise at the first batch, mid-run."""
    cfg = resolve({}, {"mixer": "cutmix", "loss": "la", "epochs": 2}, {})
    cfg["loss"]["la"] = {"prior": "mixed"}
    env = build.make_env(cfg["train"], torch.tensor([5, 4, 3]), "s", CPU)
    with pytest.raises(ValueError, match=r"prior='mixed' needs a mixer that declares .* 'cutmix'"):
        build.make_model_and_criterion(cfg, env, build.make_mixer(cfg, env))


@pytest.mark.parametrize("mixer", ["cmo", "otmix", "smc"])
def test_the_minority_mixers_declare_a_prior_for_the_mixed_reading(mixer):
    cfg = resolve({}, {"mixer": mixer, "loss": "bs", "epochs": 2}, {})
    cfg["loss"]["bs"] = {"prior": "mixed"}
    env = build.make_env(cfg["train"], torch.tensor([5, 4, 3]), "s", CPU)
    _, criterion = build.make_model_and_criterion(cfg, env, build.make_mixer(cfg, env))
    assert criterion.base.reads_label_prior
