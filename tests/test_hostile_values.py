"""Values no one can mean: the library's constructors (every mixer, loss, ``MixerEnv``,
``make_loader``) refuse them as the CLI does, by the same rule and in the same words, and
`ltpipe train` refuses them in one line before anything is written. A bool is no number, nan, inf
and subnormal floats are no setting, and sizes have upper bounds."""

import inspect

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ltpipe.kernels.boxes import sample_lam
from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards.write import write_shards
from ltpipe.train.losses.per_sample import LDAM, Focal, LogitAdjusted, build_base_loss
from ltpipe.train.losses.smc import SMCLoss
from ltpipe.train.losses.weights import ClassWeights
from ltpipe.train.mixers.base import MixerEnv
from ltpipe.train.mixers.basic import MinorityOversampling
from ltpipe.train.mixers.cmo import CMO
from ltpipe.train.mixers.cutmix import CutMix, Mixup
from ltpipe.train.mixers.m2m import M2m
from ltpipe.train.mixers.otmix import OTMix
from ltpipe.train.mixers.remix import Remix
from ltpipe.train.mixers.resizemix import ResizeMix
from ltpipe.train.mixers.smc import SMCMix
from ltpipe.train.train_cli import train

COUNTS = torch.tensor([30, 20, 10, 5])
TINY = dict(classes=4, max_per_class=48, imbalance=8, image_size=16, seed=0)
FAST = ["--model", "resnet8", "--batch-size", "16", "--warmup", "0", "--lr", "0.05",
        "--no-channels-last", "--no-progress", "--preset", "cifar", "--image-size", "16",
        "--epochs", "1"]


def env(**kw):
    return MixerEnv(**{"class_counts": COUNTS, "device": torch.device("cpu"), "image_size": 32,
                       "batch_size": 8, "epochs": 10, **kw})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "tiny"
    write_shards("synthetic", out, progress=False, **TINY)
    return out


G = nn.Linear(2, 2)  # M2m's classifier: any module will do for argument checks
# (constructor, keyword arguments, what the one-line error says); most of these were accepted
# and failed later (nan training, ZeroDivisionError, a hang) or never failed at all
LIBRARY_CASES = [
    (CMO, dict(alpha=float("inf")), "mixer cmo: alpha must be a finite number"),
    (CMO, dict(fg_r=float("nan")), "mixer cmo: fg_r must be a finite number"),
    (CMO, dict(alpha=5e-324), "alpha must be 0 or at least 2.2e-308 in size"),
    (CMO, dict(prob=True), "prob must be in [0, 1], got True"),
    (CMO, dict(fg_r=1e30), "fg_r must be in [0, 100]"),
    (CutMix, dict(alpha=1e30), "mixer cutmix: alpha must be in [1e-06, 1e+06]"),
    (Mixup, dict(alpha=1e-300), "mixer mixup: alpha must be in [1e-06, 1e+06]"),
    (Mixup, dict(mix_schedule=1), "mix_schedule must be one of repo, paper, always"),
    (ResizeMix, dict(prob=5.0), "mixer resizemix: prob must be in [0, 1]"),
    (ResizeMix, dict(scale=(0.1, float("inf"))), "scale must satisfy 0 < lo <= hi <= 1"),
    (Remix, dict(alpha=-1.0), "mixer remix: alpha must be in"),
    (Remix, dict(kappa=float("nan")), "mixer remix: kappa must be a finite number"),
    (Remix, dict(prob=2.0), "mixer remix: prob must be in [0, 1]"),
    (SMCMix, dict(views=True), "mixer smc: views must be a positive integer <= 2"),
    (SMCMix, dict(std=(1.0, 1.0, 0.0)), "mixer smc: std must be 3 finite numbers"),
    (SMCMix, dict(mean=(0.5, 0.5)), "mixer smc: mean must be 3 finite numbers"),
    (OTMix, dict(mu=-1.0), "mixer otmix: mu must be in [0, 1000]"),
    (OTMix, dict(eps=1e-300), "mixer otmix: eps must be in [1e-06, 1000]"),
    (OTMix, dict(confusion_per_class=0), "confusion_per_class must be a positive integer"),
    (OTMix, dict(bank_dtype="int8"), "bank_dtype must be one of float32"),
    (M2m, dict(classifier=G, T=10**9), "mixer m2m: T must be an integer in [0, 1000]"),
    (M2m, dict(classifier=G, beta=1.0), "mixer m2m: beta must be in [0, 1)"),
    (M2m, dict(classifier=G, eta=float("nan")), "mixer m2m: eta must be a finite number"),
    (M2m, dict(classifier=3), "mixer m2m: classifier must be a run directory"),
    (MinorityOversampling, dict(fg_r=-1.0), "mixer ros: fg_r must be in [0, 100]"),
    # a split name is a folder of the shard directory: only the manifest's names, no path
    (OTMix, dict(confusion_split="../../etc"), "confusion_split must be one of train, val"),
]


@pytest.mark.parametrize("cls,kw,needle", LIBRARY_CASES,
                         ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in LIBRARY_CASES])
def test_a_mixer_constructor_refuses_what_the_cli_refuses(cls, kw, needle):
    with pytest.raises(ValueError) as info:
        cls(env(), **kw)
    assert needle in str(info.value) and "\n" not in str(info.value)


LOSS_CASES = [
    (lambda: LDAM(COUNTS, scale=float("inf")), "loss 'ldam': scale must be a finite number"),
    (lambda: LDAM(COUNTS, max_margin=0.0), "loss 'ldam': max_margin must be in (0, 10]"),
    (lambda: LogitAdjusted(COUNTS, tau=float("nan")), "loss 'la': tau must be a finite number"),
    (lambda: LogitAdjusted(COUNTS, tau=True), "loss 'la': tau must be in [0, 100], got True"),
    (lambda: Focal(COUNTS, gamma=1e300), "loss 'focal': gamma must be in [0, 100]"),
    (lambda: SMCLoss(env(), 16, temperature=1e-300), "aux smc: temperature must be in"),
    (lambda: SMCLoss(env(), 16, weight=-1.0), "aux smc: weight must be in [0, 1000]"),
    (lambda: ClassWeights("drw", COUNTS, epochs=10, beta=1.0), "beta must be in (0, 1)"),
    (lambda: ClassWeights("drw", COUNTS, epochs=0), "epochs must be a positive integer"),
    (lambda: env(image_size=0), "MixerEnv: image_size must be a positive integer <= 4096"),
    (lambda: env(epochs=10**12), "MixerEnv: epochs must be a positive integer <= 100000"),
    (lambda: env(batch_size=True), "MixerEnv: batch_size must be a positive integer"),
    (lambda: env(seed=-1), "MixerEnv: seed must be an integer in [0, "),
]


@pytest.mark.parametrize("build,needle", LOSS_CASES, ids=[n.split(":")[0] + n.split(" ")[-1]
                                                          for _, n in LOSS_CASES])
def test_losses_weights_and_the_mixer_env_refuse_them_too(build, needle):
    with pytest.raises(ValueError) as info:
        build()
    assert needle in str(info.value), str(info.value)


# counts no data can have: each made every loss nan, or was accepted by MixerEnv, unchecked
BAD_COUNTS = [(torch.tensor([float("nan"), 5.0, 3.0]), "got nan for class 0"),
              (torch.tensor([5.0, float("inf"), 3.0]), "got inf for class 1"),
              (torch.tensor([5, 3, -1]), "got -1 for class 2"),
              (torch.tensor([5.0, 1.5, 3.0]), "got 1.5 for class 1"),
              (torch.tensor([]), "must be a non-empty 1-D tensor"),
              (torch.tensor([[5, 3]]), "must be a non-empty 1-D tensor")]
COUNT_USERS = {
    "bs": lambda c: build_base_loss("bs", c), "la": lambda c: build_base_loss("la", c),
    "ldam": lambda c: build_base_loss("ldam", c), "ce": lambda c: build_base_loss("ce", c),
    "inverse": lambda c: ClassWeights("inverse", c, epochs=4),
    "drw": lambda c: ClassWeights("drw", c, epochs=4),
    "MixerEnv": lambda c: env(class_counts=c),
}


@pytest.mark.parametrize("counts,needle", BAD_COUNTS,
                         ids=["nan", "inf", "negative", "fraction", "empty", "2-D"])
@pytest.mark.parametrize("user", sorted(COUNT_USERS))
def test_class_counts_no_data_can_have_are_refused_at_construction(user, counts, needle):
    with pytest.raises(ValueError) as info:
        COUNT_USERS[user](counts)
    assert "class_counts" in str(info.value) and needle in str(info.value), str(info.value)


def test_whole_float_counts_still_work():
    """5.0 images is a count: only values that are no count are refused."""
    counts = torch.tensor([5.0, 3.0, 1.0])
    loss = build_base_loss("bs", counts)(torch.zeros(2, 3), torch.tensor([0, 2]))
    assert torch.isfinite(loss).all()
    assert env(class_counts=counts).num_classes == 3


@pytest.mark.parametrize("name", ["ce", "bs", "la", "ldam", "focal"])
def test_logits_for_another_number_of_classes_name_both_sizes(name):
    """A raw torch error (or, for some shapes, a silent wrong loss) before."""
    loss = build_base_loss(name, COUNTS)  # 4 classes
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3\), but class_counts has 4 "
                                         r"classes"):
        loss(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_a_mixer_without_an_env_is_refused():
    with pytest.raises(ValueError, match="mixer CMO: env must be a MixerEnv"):
        CMO(None)


@pytest.mark.parametrize("kw,needle", [
    (dict(image_size=0), "image_size: must be a positive integer <= 4096 (px), got 0"),
    (dict(image_size=50000), "image_size: must be a positive integer <= 4096"),
    (dict(image_size=32.0), "image_size: must be a positive integer"),
    (dict(prefetch=True), "prefetch: must be a positive integer <= 64, got True"),
    (dict(hw_decoder_load=float("nan")), "hw_decoder_load: must be a finite number"),
    (dict(seed=-1), "seed: must be an integer in [0, "),
    (dict(num_threads=10**6), "num_threads: must be an integer in [0, 1024]"),
    (dict(skip_corrupt=1), "skip_corrupt: must be true or false, got 1"),
    (dict(r=float("inf")), "r: must be a finite number"),
])
@pytest.mark.parametrize("factory", [make_loader, make_torch_loader])
def test_make_loader_refuses_them_before_opening_the_data(tmp_path, factory, kw, needle):
    """``image_size=0`` once trained at the preset's 32 px without a word. The data is not even
    opened: the shard directory here does not exist."""
    if not set(kw) <= set(inspect.signature(factory).parameters):
        pytest.skip("the reference loader has no such keyword")
    with pytest.raises(ValueError) as info:
        factory(tmp_path / "nowhere", batch_size=8, **kw)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("alpha", [1e-6, 1e-4, 1e-3, 0.01])
def test_a_small_beta_alpha_draws_no_nan(alpha):
    """Beta(α, α) once came out nan for a quarter of the draws at α = 0.001 (both Gamma draws
    underflowed to 0), and trained on nan; it is a near fair coin on {0, 1}."""
    lam = sample_lam(100_000, alpha, torch.Generator().manual_seed(0))
    assert not lam.isnan().any() and 0 <= lam.min() and lam.max() <= 1
    assert abs(lam.mean().item() - 0.5) < 0.01 and ((lam > 0.01) & (lam < 0.99)).float().mean() \
        < 5 * alpha + 0.02


@pytest.mark.parametrize("alpha,first", [
    (4.0, [0.47825515270233154, 0.5560875535011292, 0.5013948082923889, 0.6965624094009399]),
    (0.4, [0.06833964586257935, 0.006927392911165953, 0.9982859492301941, 0.19331109523773193])])
def test_where_nothing_underflowed_the_draws_are_unchanged(alpha, first):
    """The same numbers as before the fix (recorded from it): runs stay reproducible."""
    assert sample_lam(1000, alpha, torch.Generator().manual_seed(3))[:4].tolist() == first


def invoke(*args):
    result = CliRunner().invoke(train, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.mark.parametrize("args,needle", [
    (["--lr", "1e30"], "--lr: must be in [0, 1000], got 1e+30"),
    (["--mixer", "mixup", "--mixer-opt", "alpha=5e-324"],
     "alpha: must be 0 or at least 2.2e-308 in size"),
    (["--image-size", "50000"], "--image-size: must be a positive integer <= 4096"),
    (["--momentum", "1.5"], "--momentum: must be in [0, 1]"),
    (["--seed", str(2**64)], "--seed: must be an integer in [0, "),
    (["--epochs", str(10**12)], "--epochs: must be a positive integer <= 100000"),
    (["--loader-opt", "prefetch=true"], "[loader] prefetch: must be a positive integer"),
    (["--loader-opt", "threads=true"], "[loader] threads: must be an integer in [0, 1024]"),
    (["--loader-opt", "hw_decoder_load=true"], "[loader] hw_decoder_load: must be in [0, 1]"),
    (["--mixer", "cmo", "--mixer-opt", "env={a=1}"], "mixer 'cmo': 'env' is not a parameter"),
    (["--mixer", "mixup", "--mixer-opt", "env=1"], "mixer 'mixup': 'env' is not a parameter"),
    (["--loss", "la", "--loss-opt", "class_counts=1"], "'class_counts' is not a parameter"),
    (["--mixer", "otmix", "--mixer-opt", "mu=-1"], "mixer 'otmix': mu must be in [0, 1000]"),
    (["--mixer", "cmo", "--fg-r", "1e30"], "mixer 'cmo': fg_r must be in [0, 100]"),
    (["--mixer", "otmix", "--otmix-confusion-split", "bogus"],
     "mixer 'otmix': confusion_split must be one of train, val, got 'bogus'"),
])
def test_the_cli_refuses_them_in_one_line_before_writing(shards, tmp_path, args, needle):
    res = invoke(shards, "--out", tmp_path / "r", *FAST, *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text,needle", [
    ("[train]\nimage_size = 1e17\n", "[train] image_size: must be a positive integer <= 4096"),
    ("[train]\nimage_size = 100000\n", "[train] image_size: must be a positive integer <= 4096"),
    ("[loader]\nprefetch = true\n", "[loader] prefetch: must be a positive integer"),
    ("[train]\nepochs = true\n", "[train] epochs: must be a positive integer"),
    ("[train]\nlr = true\n", "[train] lr: must be in [0, 1000], got True"),
    ("[mixer.cmo]\nalpha = 1e-320\n", "[mixer.cmo] alpha: must be 0 or at least 2.2e-308"),
    ("[mixer.remix]\nprob = 3.0\n", "[mixer.remix]: prob must be in [0, 1]"),
    ("[loss.focal]\ngamma = 1e300\n", "[loss.focal]: gamma must be in [0, 100]"),
])
def test_a_recipe_gets_the_same_rules(shards, tmp_path, text, needle):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    res = invoke(shards, "--out", tmp_path / "r", "--recipe", recipe, *FAST)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and needle in res.stderr and str(recipe) in res.stderr, \
        res.stderr
    assert not (tmp_path / "r").exists()


def test_the_cli_and_the_constructor_say_the_same(shards, tmp_path):
    res = invoke(shards, "--out", tmp_path / "r", *FAST, "--mixer", "cutmix",
                 "--mixer-opt", "alpha=2e6")
    with pytest.raises(ValueError) as info:
        CutMix(env(), alpha=2e6)
    words = str(info.value).split(": ", 1)[1]  # after "mixer cutmix: "
    assert words == "alpha must be in [1e-06, 1e+06], got 2000000.0"
    assert res.exit_code == 2 and res.stderr.rstrip().endswith(words), res.stderr
