"""Recipes, config resolution and round trip, LR schedule, models, aux-term wiring, load_model."""

import math
import tomllib

import pytest
import torch

from ltpipe.pipeline import loader_args
from ltpipe.train import build
from ltpipe.train.checkpoint import CheckpointError, load_model, save_atomic
from ltpipe.train.config import (ConfigError, as_used, changes, differences, load_recipe,
                                 parse_scalar, recipe_names, resolve, to_toml)
from ltpipe.train.dist import DistInfo
from ltpipe.train.models import build_model
from ltpipe.train.schedule import LRSchedule


def test_shipped_recipes_resolve_with_the_papers_values():
    assert {"cifar100-lt", "cifar10-lt", "imagenet-lt", "inat2018", "synthetic"} <= set(recipe_names())
    for name in recipe_names():
        resolve(load_recipe(name), {}, {})
    c = resolve(load_recipe("cifar100-lt"), {"mixer": "cmo"}, {})
    t = c["train"]
    assert (t["model"], t["epochs"], t["batch_size"], t["lr"], t["wd"]) == ("resnet32", 200, 128, 0.1, 2e-4)
    assert (t["warmup"], t["milestones"], t["gamma"], t["drw_epoch"]) == (5, [160, 180], 0.01, 160)
    assert c["mixer"] == {"cmo": {"prob": 0.5, "mix_schedule": "repo", "box": "batch",
                                  "alpha": 1.0, "fg_r": 0.0}}
    inat = load_recipe("inat2018")["train"]  # extends imagenet-lt
    assert (inat["model"], inat["epochs"], inat["milestones"]) == ("resnet50", 200, [75, 160])


def test_cli_overrides_recipe_and_round_trips_through_toml():
    cfg = resolve(load_recipe("cifar100-lt"), {"lr": 0.2, "epochs": None, "mixer": "cmo"},
                  {"fg_r": 1.0})
    assert cfg["train"]["lr"] == 0.2 and cfg["train"]["epochs"] == 200
    assert cfg["mixer"]["cmo"]["fg_r"] == 1.0 and cfg["mixer"]["cmo"]["prob"] == 0.5
    cfg["run"] = {"git": "abc", "command": 'ltpipe train "x" C:\\d\x01\t\x7f\né'}
    assert tomllib.loads(to_toml(cfg)) == cfg
    again = resolve({k: v for k, v in cfg.items() if k != "run"}, {"device": "cuda"}, {})
    assert differences(cfg, again) == []  # device may change on resume
    assert differences(cfg, resolve(cfg, {"wd": 0.1}, {})) == ["train.wd (0.0002 -> 0.1)"]


def test_a_cpu_run_records_what_it_used_and_still_resumes():
    """The CPU trains in fp32 on no CUDA stream: config.toml says so. A resume compares the
    configs as used on its device: a CPU run recorded with the defaults' bf16 (an older ltpipe)
    resumes on the CPU, a CUDA run may resume on the CPU, a precision typed on CUDA is a change."""
    cpu = as_used(resolve({}, {}, {}))
    assert cpu["train"]["precision"] == "fp32" and "compute_stream" not in cpu["train"]
    assert tomllib.loads(to_toml(cpu)) == cpu
    resumed = as_used(resolve(tomllib.loads(to_toml(cpu)), {}, {}))
    assert changes(cpu, resumed) == [] and resumed == cpu
    older = resolve({}, {}, {})  # precision "bf16", compute_stream "high", device "cpu"
    assert changes(older, as_used(resolve(older, {}, {}))) == []
    cuda = as_used(resolve({}, {"device": "cuda"}, {}))
    assert cuda["train"]["precision"] == "bf16" and cuda["train"]["compute_stream"] == "high"
    assert changes(cuda, as_used(resolve(cuda, {"device": "cpu"}, {}))) == []
    assert changes(cpu, as_used(resolve(cpu, {"device": "cuda"}, {}))) == []  # fp32 on CUDA
    assert changes(cuda, as_used(resolve(cuda, {"precision": "fp16"}, {}))) == \
        ["train.precision ('bf16' -> 'fp16')"]


@pytest.mark.parametrize("override,needle", [({"epochs": 0}, "--epochs"), ({"lr": -1.0}, "--lr"),
                                             ({"schedule": "linear"}, "--schedule"),
                                             ({"compute_stream": "max"}, "--compute-stream")])
def test_bad_values_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve({}, override, {})


@pytest.mark.parametrize("text,needle", [
    ('[train]\nepochs = "two"', r"bad.toml: \[train\] epochs: must be a positive integer"),
    ("[train]\nepoch = 2", r"unknown keys \['epoch'\] \(allowed: model, epochs"),
    ('[train]\nchannels_last = "no"', r"\[train\] channels_last: must be true or false"),
    ("[mixer.cmx]\nprob = 1.0", r"bad.toml: \[mixer.cmx\]: unknown mixer"),
    ("[train]\nloss = \"ce\"\n[loss.ldam]\nmaxm = 0.3", r"\[loss.ldam\]: unknown parameter 'maxm'"),
    ('[mixer.cmo]\nprob = "high"', r"\[mixer.cmo\]: prob must be float"),
    ("[train]\ndrw_epoch = true", r"\[train\] drw_epoch: must be an epoch"),
    ("[train]\nmilestones = [true]", r"\[train\] milestones: must be a list of epochs"),
])
def test_a_recipe_files_bad_values_name_the_file(tmp_path, text, needle):
    """Each table is checked, the chosen mixer's and loss's or not: a typo never passes."""
    (tmp_path / "bad.toml").write_text(text + "\n")
    with pytest.raises(ConfigError, match=needle):
        load_recipe(str(tmp_path / "bad.toml"))


def test_extends_finds_a_file_beside_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "base.toml").write_text("[train]\nepochs = 7\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[train]\nlr = 0.2\n')
    monkeypatch.chdir("/")  # not where the recipes are
    t = load_recipe(str(tmp_path / "child.toml"))["train"]
    assert t == {"epochs": 7, "lr": 0.2}


@pytest.mark.parametrize("loader,needle", [({"threads": -1}, r"\[loader\] threads"),
                                           ({"prefetch": 0}, r"\[loader\] prefetch"),
                                           ({"hw_decoder_load": 1.5}, "hw_decoder_load"),
                                           ({"speed": 2}, "unknown keys"),
                                           ({"cpu_decode": ["q"]}, "cpu_decode"),
                                           ({"q_decode": "roi"}, r"q_decode: must be one of "
                                                                 r"auto, tiles, tiles-whole"),
                                           ({"q_cache_gb": -1}, r"\[loader\] q_cache_gb: must "
                                                                r"be 'auto' or GB in \[0, 10000\]"),
                                           ({"q_cache_gb": "big"}, r"\[loader\] q_cache_gb"),
                                           ({"q_cache_gb": True}, r"\[loader\] q_cache_gb"),
                                           ({"q_cache_side": 4}, r"\[loader\] q_cache_side: "
                                                                 r"must be an integer in \[8, ")])
def test_bad_loader_values_are_named(loader, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve({}, {}, {}, loader_overrides=loader)


@pytest.mark.parametrize("gb", ["auto", 0, 2, 0.5])
def test_q_cache_budgets_reach_the_loader(gb):
    cfg = resolve({}, {}, {}, loader_overrides={"q_cache_gb": gb, "q_cache_side": 256})
    resources = build.loader_resources(cfg["loader"])
    assert (resources["q_cache_gb"], resources["q_cache_side"]) == (gb, 256)


@pytest.mark.parametrize("mode", ["auto", "tiles", "tiles-whole", "full"])
def test_every_q_decode_mode_of_the_loader_is_a_valid_setting(mode):
    assert resolve({}, {}, {}, loader_overrides={"q_decode": mode})["loader"]["q_decode"] == mode


def test_loader_resources_may_change_on_resume_and_default_to_this_ranks_cpus(monkeypatch):
    cfg = resolve({}, {}, {})
    faster = resolve(cfg, {"compute_stream": "default"}, {}, loader_overrides={"threads": 12})
    assert differences(cfg, faster) == []  # speed settings, never the samples
    monkeypatch.setattr(loader_args, "cpus_per_rank", lambda: 12)
    auto = build.loader_resources(cfg["loader"])
    assert auto["num_threads"] == 12 and auto["py_workers"] == 3 and auto["prefetch"] == 3
    assert build.loader_resources(faster["loader"] | {"py_workers": 5})["py_workers"] == 5
    monkeypatch.undo()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "10000")  # more ranks than CPUs: still one thread
    assert loader_args.cpus_per_rank() == 1


def test_parse_scalar():
    assert parse_scalar("0.5") == 0.5 and parse_scalar("true") is True
    assert parse_scalar('"repo"') == "repo" and parse_scalar("repo") == "repo"
    assert parse_scalar("[1, 2]") == [1, 2]


def test_lr_schedule():
    s = LRSchedule(steps_per_epoch=10, epochs=200, warmup=5, schedule="step",
                   milestones=(160, 180), gamma=0.01)
    assert s(0) == pytest.approx(1 / 50) and s(49) == 1.0 and s(1599) == 1.0
    assert s(1600) == pytest.approx(0.01) and s(1800) == pytest.approx(1e-4)
    c = LRSchedule(steps_per_epoch=10, epochs=10, schedule="cosine")
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    assert math.isclose(c(25), 0.5 * (1 + math.cos(math.pi / 4)))


def test_models_and_cosine_classifier():
    m = build_model("resnet32", 10)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(0.46e6, rel=0.02)  # He et al.
    out = m(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 10) and out.features.shape == (2, 64) and out.extras == {}
    cos = build_model("resnet8", 5, cosine_classifier=True)
    assert cos(torch.randn(3, 3, 16, 16)).logits.abs().max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="model: unknown"):
        build_model("vgg", 3)


def test_aux_terms_of_a_mixer_get_a_trained_head():
    t = {"image_size": 16, "batch_size": 4, "epochs": 2, "seed": 0, "model": "resnet8",
         "loss": "bs", "reweight": "none", "drw_epoch": -1, "channels_last": False,
         "skip_corrupt": False}
    cfg = {"train": {**t, "mixer": "smc"}, "mixer": {"smc": {}}, "loss": {}, "aux": {}}
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    env = build.make_env(t, torch.tensor([20, 10, 5]), "unused", info)
    mixer = build.make_mixer(cfg, env)
    model, crit = build.make_model_and_criterion(cfg, env, mixer)
    assert list(crit.aux) == ["smc"] and len(model.heads) == 1
    opt, _ = build.make_optimizer({**t, "lr": 0.1, "momentum": 0.9, "wd": 0, "nesterov": False,
                                   "warmup": 0, "schedule": "constant", "milestones": [],
                                   "gamma": 0.1}, model, crit, 1)
    head_params = {id(p) for p in model.heads.parameters()}
    assert head_params <= {id(p) for g in opt.param_groups for p in g["params"]}


def test_load_model_restores_a_frozen_classifier(tmp_path):
    model = build_model("resnet8", 3)
    (tmp_path / "config.toml").write_text('[train]\nmodel = "resnet8"\nloss = "ce"\n'
                                          '[run]\nshards = "/data"\n')
    save_atomic({"format": 1, "num_classes": 3, "model": model.state_dict()}, tmp_path / "final.pt")
    g = load_model(tmp_path)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(g(x).logits, model(x).logits)
    with pytest.raises(CheckpointError, match="config.toml"):
        load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="final.pt: trained on 3 classes, this run has 4"):
        load_model(tmp_path, num_classes=4)


def test_load_model_of_an_unfinished_run_warns_and_uses_last(tmp_path, caplog):
    model = build_model("resnet8", 3)
    (tmp_path / "config.toml").write_text('[train]\nmodel = "resnet8"\nloss = "ce"\nepochs = 9\n'
                                          '[run]\nshards = "/data"\n')
    save_atomic({"format": 1, "num_classes": 3, "epoch": 4, "model": model.state_dict()},
                tmp_path / "ckpt" / "last.pt")
    with caplog.at_level("WARNING"):
        g = load_model(tmp_path)
    assert "unfinished run" in caplog.text and "epoch 4 of 9" in caplog.text
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(g(x).logits, model(x).logits)
    caplog.clear()
    save_atomic({"format": 1, "num_classes": 3, "model": model.state_dict()}, tmp_path / "final.pt")
    with caplog.at_level("WARNING"):
        load_model(tmp_path)
    assert "unfinished" not in caplog.text


def test_load_model_warns_about_a_classifier_trained_on_other_data(tmp_path, caplog):
    model = build_model("resnet8", 3)
    (tmp_path / "config.toml").write_text(
        '[train]\nmodel = "resnet8"\nloss = "ce"\nimage_size = 64\n'
        f'[run]\nshards = "{tmp_path / "a"}"\n')
    save_atomic({"format": 1, "num_classes": 3, "model": model.state_dict()}, tmp_path / "final.pt")
    with caplog.at_level("WARNING"):
        load_model(tmp_path, image_size=64, shards=tmp_path / "a")
    assert "warning" not in caplog.text
    with caplog.at_level("WARNING"):
        load_model(tmp_path, image_size=32, shards=tmp_path / "b")
    assert "trained at 64 px, this run trains at 32 px" in caplog.text
    assert f"was trained on {tmp_path / 'a'}, this run reads {tmp_path / 'b'}" in caplog.text
