"""OTmix (METHODS.md: OTmix): POT agreement, schedule, confusion matrix, bank vs exact features."""

import numpy as np
import ot
import pytest
import torch
from torch import nn

from ltpipe.pipeline.batch import Batch
from ltpipe.train.losses.base import ModelOutput
from ltpipe.train.mixers import confusion as conf
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.otmix import OTMix, draw_use_ot, ot_cost, ot_pairs, ot_probability

C, H, B = 5, 8, 12
COUNTS = torch.tensor([40, 20, 10, 5, 3])


class TinyNet(nn.Module):
    """No BatchNorm, so features do not depend on the batch (exact == bank when unchanged)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, C)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        f = self.body(x)
        return ModelOutput(self.fc(f), f, {})


def env(epochs=20):
    return MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=H, batch_size=B,
                    epochs=epochs)


def ctx(epoch=10, seed=0, model=None):
    return StepContext(epoch=epoch, epochs=20, step=0, class_counts=COUNTS,
                       generator=torch.Generator().manual_seed(seed), model=model)


def streams(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(int(COUNTS.sum()), generator=g)  # disjoint ids: one image per id
    bg = Batch(torch.rand(B, 3, H, H, generator=g), torch.randint(0, C, (B,), generator=g), ids[:B])
    fg = Batch(torch.rand(B + 2, 3, H, H, generator=g), torch.randint(0, C, (B + 2,), generator=g),
               ids[B:2 * B + 2])
    return {"uniform": bg, "minority": fg}


def random_fhat(seed=0):
    g = torch.Generator().manual_seed(seed)
    return conf.confusion_matrix(torch.randint(0, 20, (C, C), generator=g))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_equal_argmax_of_pot_plan(seed):
    g = torch.Generator().manual_seed(seed)
    zf, zb = torch.randn(B, 6, generator=g), torch.randn(B, 6, generator=g)
    y_fg, y_bg = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
    cost = ot_cost(zf, zb, y_fg, y_bg, random_fhat(seed), omega=0.05)
    pairs = ot_pairs(cost, eps=0.01)
    a = np.full(B, 1 / B)
    plan = ot.sinkhorn(a, a, cost.double().numpy(), reg=0.01, method="sinkhorn_log",
                       numItermax=100_000, stopThr=1e-9)  # converged reference
    assert pairs.tolist() == plan.argmax(1).tolist()


def test_cost_formula_and_orientation():
    zf, zb = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fhat = torch.tensor([[0.0, 0.6], [0.2, 0.0]])
    c = ot_cost(zf, zb, torch.tensor([0]), torch.tensor([0, 1]), fhat, omega=0.25)
    assert c[0].tolist() == pytest.approx([0.75 * 1.0, 0.25 * 1.0 + 0.75 * 0.4])
    c = ot_cost(zf, zb, torch.tensor([0]), torch.tensor([0, 1]), fhat, 0.25, indexing="bg_fg")
    assert c[0, 1].item() == pytest.approx(0.25 + 0.75 * 0.8)  # F̂[y_bg=1, y_fg=0]


def test_confusion_matrix_rows_and_diagonal():
    counts = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    f = conf.confusion_matrix(counts)
    assert f.flatten().tolist() == pytest.approx([0, 0.25, 0, 0, 0, 0, 0.25, 0.25, 0])


def test_ot_probability_is_t_over_T_with_t_the_0_indexed_epoch():
    """use_ot ~ Bernoulli((t/T)^μ), t = the 0-indexed epoch (so epoch 0 never takes OT)."""
    assert ot_probability(0, 20, 1.0) == 0.0
    assert ot_probability(5, 20, 1.0) == 0.25
    assert ot_probability(10, 20, 2.0) == 0.25
    assert ot_probability(19, 20, 1.0) == 0.95


def test_constructor_defaults_are_the_papers_values():
    """Hyper-parameters ω=0.05, ε=0.01, α=4 (Beta(4,4)), μ=1; repo p=0.5 in 3 < e < E−3;
    one box per batch, whole batch mixed, F̂[y_fg, y_bg], features of the current model; fg r=1
    (the loader's default, METHODS.md: The meaning of r)."""
    m = OTMix(env())
    assert (m.omega, m.eps, m.alpha, m.mu) == (0.05, 0.01, 4.0, 1.0)
    assert (m.prob, m.mix_schedule, m.box, m.fraction) == (0.5, "repo", "batch", 1.0)
    assert (m.confusion_index, m.confusion_split, m.mode, m.fg_r) == ("fg_bg", "val", "exact", 1.0)


def test_schedule_probability_follows_t_over_T():
    """draw_use_ot draws with ot_probability (its values: the test above)."""
    for t, T in ((5, 20), (15, 20)):
        draws = [draw_use_ot(seed, t, T, 1.0) for seed in range(600)]
        p = t / T
        assert abs(np.mean(draws) - p) <= 4 * (p * (1 - p) / 600) ** 0.5
    assert not any(draw_use_ot(s, 0, 20, 1.0) for s in range(50))
    # μ = 2: (t/T)^2
    draws = [draw_use_ot(seed, 10, 20, 2.0) for seed in range(600)]
    assert abs(np.mean(draws) - 0.25) <= 4 * (0.25 * 0.75 / 600) ** 0.5


def test_ot_step_mixes_the_paired_background():
    model = TinyNet()
    m = OTMix(env(), prob=1.0, mix_schedule="always")
    m.force_ot = True
    m.fhat.copy_(random_fhat())
    m.has_fhat.fill_(True)
    s = streams()
    bg_images = s["uniform"].images.clone()
    out = m(s, ctx(model=model))
    pairs = out.extras["pairs"]
    with torch.no_grad():
        cost = ot_cost(model.features(s["minority"].images[:B]), model.features(bg_images),
                       s["minority"].labels[:B], s["uniform"].labels, m.fhat, 0.05)
    assert torch.equal(pairs, ot_pairs(cost, 0.01))
    assert torch.equal(out.y_a, s["uniform"].labels[pairs])
    assert torch.equal(out.y_b, s["minority"].labels[:B])
    x0, y0, x1, y1 = out.extras["boxes"][0].tolist()
    outside = torch.ones(H, H, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out.images[3][:, outside], bg_images[pairs[3]][:, outside])
    assert torch.equal(out.images[3][:, y0:y1, x0:x1], s["minority"].images[3][:, y0:y1, x0:x1])
    assert out.lam[0].item() == pytest.approx(1 - (x1 - x0) * (y1 - y0) / H**2)


def test_without_confusion_or_ot_draw_it_is_a_cmo_step():
    m = OTMix(env(), prob=1.0, mix_schedule="always")
    m.force_ot = True  # but no F̂ yet
    out = m(streams(), ctx(model=TinyNet()))
    assert out.extras["ot"] is False and out.extras["pairs"].tolist() == list(range(B))


def test_fraction_mixes_only_some_rows():
    m = OTMix(env(), prob=1.0, mix_schedule="always", fraction=0.5)
    out = m(streams(), ctx())
    mixed = out.extras["mixed"]
    assert mixed.sum().item() == B // 2
    assert torch.all(out.lam[~mixed] == 1) and torch.equal(out.y_b[~mixed], out.y_a[~mixed])


def test_bank_mode_pairs_equal_exact_when_features_unchanged():
    model = TinyNet()
    s = streams(3)
    exact = OTMix(env(), mode="exact", prob=1.0, mix_schedule="always")
    bank = OTMix(env(), mode="bank", prob=1.0, mix_schedule="always")
    for m in (exact, bank):
        m.force_ot = True
        m.fhat.copy_(random_fhat(3))
        m.has_fhat.fill_(True)
    # plain steps over every sample the two streams hold fill the bank (observe: unmixed rows)
    for name in ("uniform", "minority"):
        b = s[name]
        with torch.no_grad():
            out = model(b.images)
        plain = OTMix(env(), prob=0.0)(s | {"uniform": b}, ctx())
        assert not plain.extras["mixed"].any()
        bank.observe(out, plain)
    assert int(bank.bank_seen.sum()) == 2 * B + 2
    s_exact, s_bank = streams(3), streams(3)  # the mixers paste in place: fresh copies
    p_exact = exact(s_exact, ctx(seed=7, model=model)).extras["pairs"]
    p_bank = bank(s_bank, ctx(seed=7, model=None)).extras["pairs"]  # bank: no model needed
    assert torch.equal(p_exact, p_bank)
    # mixed rows are never written to the bank (row N is the sink they go to)
    before = bank.bank[:-1].clone()
    mixed = bank(streams(4), ctx(seed=8))
    bank.observe(ModelOutput(torch.zeros(B, C), torch.randn(B, 6), {}), mixed)
    assert torch.equal(bank.bank[:-1], before)


def observed(ids, plain, feats):
    from ltpipe.pipeline.batch import MixedBatch

    n = len(ids)
    mixed = MixedBatch(torch.zeros(n, 3, H, H), torch.zeros(n, dtype=torch.long),
                       torch.zeros(n, dtype=torch.long), torch.ones(n),
                       {"index": torch.tensor(ids), "mixed": ~torch.tensor(plain)})
    return ModelOutput(torch.zeros(n, C), feats, {}), mixed


def test_bank_stores_the_unmixed_row_of_an_id_that_also_appears_mixed():
    """OT pairs can show one background in several rows, mixed and not: only the plain one is
    stored, whatever the order of the writes."""
    bank = OTMix(env(), mode="bank")
    feats = torch.arange(4 * 6, dtype=torch.float32).view(4, 6)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        ids, plain = [7, 7, 9, 7], [False, True, False, False]
        bank.observe(*observed([ids[i] for i in order], [plain[i] for i in order],
                               feats[order]))
        assert torch.equal(bank.bank[7], feats[1]) and bool(bank.bank_seen[7])
        assert not bool(bank.bank_seen[9]) and not bank.bank[9].any()


def test_bank_is_in_the_checkpoint():
    bank = OTMix(env(), mode="bank")
    bank.observe(*observed([3, 5], [True, True], torch.randn(2, 6)))
    fresh = OTMix(env(), mode="bank")
    fresh.load_state_dict(bank.state_dict())
    assert torch.equal(fresh.bank, bank.bank) and torch.equal(fresh.bank_seen, bank.bank_seen)


def _observe_on_rank(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    bank = OTMix(MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=H,
                          batch_size=3, epochs=20, rank=rank, world=world), mode="bank")
    ids = [[1, 2, 3], [10, 11]][rank]  # rank 1's batch is short: padded with unstored rows
    feats = torch.full((len(ids), 6), float(rank + 1))
    bank.observe(*observed(ids, [True] * len(ids), feats))
    torch.save((bank.bank, bank.bank_seen), f"{out_dir}/bank-{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_store_every_ranks_rows(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_observe_on_rank, args=(2, tmp_path / "init", tmp_path), nprocs=2)
    (b0, s0), (b1, s1) = (torch.load(tmp_path / f"bank-{r}.pt") for r in (0, 1))
    assert torch.equal(b0, b1) and torch.equal(s0, s1)  # every rank holds the same bank
    assert torch.nonzero(s0[:-1]).flatten().tolist() == [1, 2, 3, 10, 11]
    assert (b0[[1, 2, 3]] == 1).all() and (b0[[10, 11]] == 2).all() and not b0[0].any()


def test_confusion_counts_from_steps_only_kept_ids():
    model = TinyNet()
    s = streams(5)
    bg = s["uniform"]
    keep = torch.sort(bg.index[:4]).values
    counts = conf.confusion_counts(model, [{"uniform": bg}], C, torch.device("cpu"), keep)
    assert counts.sum().item() == 4
    with torch.no_grad():
        pred = model(bg.images[:4]).logits.argmax(1)
    want = torch.zeros(C, C, dtype=torch.int64)
    for t, p in zip(bg.labels[:4].tolist(), pred.tolist()):
        want[t, p] += 1
    assert torch.equal(counts, want)
    assert model.training  # restored


def test_bad_params():
    with pytest.raises(ValueError, match="mixer otmix: mode"):
        OTMix(env(), mode="fast")
    with pytest.raises(ValueError, match="fraction"):
        OTMix(env(), fraction=0.0)
