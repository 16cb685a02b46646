"""The exponential null and the p-value, against closed forms."""
import math

import pytest
import torch

import solution


def test_exponential_mle_is_min_and_mean_minus_min():
    loc, scale = solution.exponential_fit([3.0, 4.0, 5.0, 8.0])
    assert loc == 3.0 and scale == pytest.approx(2.0)


def test_exponential_mle_recovers_parameters_of_a_large_sample():
    g = torch.Generator().manual_seed(0)
    x = 1.5 + 0.7 * torch.empty(200_000, dtype=torch.float64).exponential_(generator=g)
    loc, scale = solution.exponential_fit(x)
    assert loc == pytest.approx(1.5, abs=1e-3) and scale == pytest.approx(0.7, rel=0.01)


def test_p_value_closed_form():
    # null [0, 1, 2]: loc 0, scale 1; F(10) = 1 - e^-10; p = 1 - F^4
    p = solution.max_p_value([1.0, 10.0, 0.0, 2.0])
    assert p == pytest.approx(1 - (1 - math.exp(-10)) ** 4, rel=1e-9)


def test_p_value_is_small_for_an_outlier_and_large_without_one():
    assert solution.max_p_value([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 1.0, 0.98, 30.0]) < 1e-6
    assert solution.max_p_value([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 1.0, 0.98, 1.25]) > 0.5


def test_rule_fires_often_on_exponential_draws_and_rarely_on_gaussian_ones():
    # The seed's test fits loc and scale to only K-1 points, so on statistics that truly are exponential
    # (K = 10) "p < 0.08" fires about 30% of the time, not 8%; on light-tailed (Gaussian) statistics it
    # almost never fires. A per-class statistic must therefore be light-tailed on clean models.
    g = torch.Generator().manual_seed(1)
    n = 2000
    expo = sum(solution.max_p_value(torch.empty(10).exponential_(generator=g)) < 0.08 for _ in range(n)) / n
    gauss = sum(solution.max_p_value(5 + torch.randn(10, generator=g)) < 0.08 for _ in range(n)) / n
    assert 0.2 < expo < 0.4
    assert gauss < 0.08


def _fitted_z(x):
    """Rows of K statistics -> Z = (max - loc) / scale with loc, scale fitted to the other K - 1."""
    s = x.sort(1).values
    rest = s[:, :-1]
    return (s[:, -1] - rest[:, 0]) / (rest.mean(1) - rest[:, 0])


@pytest.mark.parametrize('k', [3, 10, 43, 200])
def test_exact_tail_matches_a_simulation_of_exponential_statistics(k):
    g = torch.Generator().manual_seed(k)
    n = 40_000
    z = _fitted_z(torch.empty(n, k, dtype=torch.float64).exponential_(generator=g))
    for q in (0.01, 0.08, 0.3, 0.7):
        z0 = float(z.quantile(1 - q))
        tol = 4 * math.sqrt(q * (1 - q) / n) + 1e-4  # four standard errors of the simulated share
        assert solution.exact_tail(z0, k) == pytest.approx(float((z >= z0).double().mean()), abs=tol)


def _fisher_g_tail_rational(z, k):
    """exact_tail in exact rational arithmetic: no rounding, so no cancellation."""
    from fractions import Fraction
    m, z = k - 1, Fraction(z)
    x = z / (m + z)
    return float(min(1, sum((-1) ** (j - 1) * math.comb(m, j) * (1 - j * x) ** (m - 1)
                            for j in range(1, m + 1) if j * x < 1)))


@pytest.mark.parametrize('k', [4, 10, 100, 200])
def test_exact_tail_agrees_with_rational_arithmetic(k):
    for z in [0.5 * i for i in range(1, 60)]:
        assert solution.exact_tail(z, k) == pytest.approx(_fisher_g_tail_rational(z, k), abs=1e-5)


def test_exact_tail_closed_forms_and_edges():
    # K = 3: g = M / S of two exponentials is at least 1/2, and P(g >= x) = 2 (1 - x); x = z / (2 + z)
    assert solution.exact_tail(6.0, 3) == pytest.approx(0.5, rel=1e-12)
    assert solution.exact_tail(1.0, 3) == pytest.approx(1.0)  # x = 1/3 < 1/2: always exceeded
    assert solution.exact_tail(0.0, 10) == 1.0 and solution.exact_tail(float('inf'), 10) == 0.0
    assert solution.exact_tail(5.0, 2) == 1.0  # one null point: no test
    # far out, one term is left: m (1 - x)^(m - 1), here with m = 9, x = 90 / 99
    assert solution.exact_tail(90.0, 10) == pytest.approx(9 * (9 / 99) ** 8, rel=1e-9)
    assert all(0.0 <= solution.exact_tail(z, 1000) <= 1.0 for z in (0.5, 2.0, 5.0, 20.0))


def test_exact_null_fires_at_its_nominal_rate_where_the_plug_in_fires_four_times_as_often(monkeypatch):
    g = torch.Generator().manual_seed(2)
    draws = [torch.empty(10, dtype=torch.float64).exponential_(generator=g) for _ in range(3000)]
    plug_in = sum(solution.max_p_value(d, null='plug-in') < 0.08 for d in draws) / len(draws)
    exact = sum(solution.max_p_value(d, null='exact') < 0.08 for d in draws) / len(draws)
    assert 0.06 < exact < 0.10 and plug_in > 3 * exact
    monkeypatch.setitem(solution.HYP, 'null', 'exact')  # the setting picks the default...
    assert solution.max_p_value(draws[0]) == solution.max_p_value(draws[0], null='exact')
    p = solution.max_p_value([1.0, 10.0, 0.0, 2.0], null='plug-in')  # ...and an explicit choice overrides it
    assert p == pytest.approx(1 - (1 - math.exp(-10)) ** 4, rel=1e-9)
    assert solution.max_p_value([2.0, 2.0, 2.0, 2.0]) == 1.0 and solution.max_p_value([2.0, 2.0, 2.0, 5.0]) < 1e-6


def test_two_classes_have_no_null_and_are_called_clean():
    assert solution.max_p_value([0.0, 100.0]) == 1.0


def test_degenerate_null_does_not_divide_by_zero():
    assert solution.max_p_value([2.0, 2.0, 2.0, 2.0]) == 1.0
    assert solution.max_p_value([2.0, 2.0, 2.0, 5.0]) < 1e-6


def test_margin():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert solution.margin(logits, torch.tensor([1, 1])).tolist() == [1.0, -5.0]


def test_projection_keeps_each_images_largest_changes_inside_the_bounds():
    start = torch.zeros(2, 3, 4, 4)
    var = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    var[0, :, 1, 2] = 5.0  # the largest change of image 0: beyond the upper bound
    lo, hi = torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 2.0)
    size_before = var.norm(dim=1).flatten(1)
    solution._project(var, start, (lo, hi), area=0.25)
    changed = (var != 0).any(1).flatten(1)
    assert changed.sum(1).tolist() == [4, 4]  # 25% of 16 positions per image
    for i in range(2):  # they are the positions of largest change
        assert set(changed[i].nonzero()[:, 0].tolist()) == set(size_before[i].topk(4).indices.tolist())
    assert var.max() <= 2.0 and var[0, :, 1, 2].tolist() == [2.0, 2.0, 2.0]


class _LinearHead:
    """A stand-in for the network after the cut: penultimate features = the flattened activation,
    logits = W h."""

    def __init__(self, w):
        self.w = w

    def pooled(self, h):
        return h.flatten(1)

    def linear(self, f):
        return f @ self.w.T

    def logits(self, h):
        return self.linear(self.pooled(h))


def test_transfer_rewards_one_direction_shared_by_all_images(monkeypatch):
    monkeypatch.setitem(solution.HYP, 'alphas', (1.0,))
    g = torch.Generator().manual_seed(0)
    d = 16
    w = torch.randn(3, d, generator=g)
    h0 = torch.randn(8, d, 1, 1, generator=g)
    toward0 = (w[0] - w[1:].mean(0)).view(1, d, 1, 1)
    agreeing = toward0.expand(8, -1, -1, -1) + 0.1 * torch.randn(8, d, 1, 1, generator=g)
    # class 1: every image's change raises class 1 over class 0, but each goes its own way
    scattered = torch.randn(8, d, 1, 1, generator=g)
    sign = torch.sign((scattered.flatten(1) * (w[1] - w[0])).sum(1)).view(8, 1, 1, 1)
    scattered = scattered * sign
    target = torch.tensor([0, 1]).repeat_interleave(8)
    stats, landed, _ = solution._transfer(_LinearHead(w), h0, torch.cat([agreeing, scattered]), target)
    assert stats[0] > 5 * stats[1]
    u0 = torch.nn.functional.normalize(agreeing.flatten(1), dim=1).mean(0)
    expected = h0.flatten(1) + h0.flatten(1).norm(dim=1, keepdim=True) * u0 / u0.norm()
    assert torch.allclose(landed[0], expected.mean(0), atol=1e-5)  # where the one norm tried lands them


def test_leave_one_out_pushes_each_image_by_the_other_images_changes(monkeypatch):
    monkeypatch.setitem(solution.HYP, 'alphas', (1.0,))
    monkeypatch.setitem(solution.HYP, 'leave_one_out', True)
    g = torch.Generator().manual_seed(1)
    d = 6
    w = torch.randn(2, d, generator=g)
    h0 = torch.randn(3, d, 1, 1, generator=g)
    delta = torch.randn(3, d, 1, 1, generator=g)
    _, landed, _ = solution._transfer(_LinearHead(w), h0, delta, torch.zeros(3, dtype=torch.long))
    unit = torch.nn.functional.normalize(delta.flatten(1), dim=1)
    others = torch.nn.functional.normalize(unit.sum(0, keepdim=True) - unit, dim=1)  # row i: all but image i
    expected = h0.flatten(1) + h0.flatten(1).norm(dim=1, keepdim=True) * others
    assert torch.allclose(landed[0], expected.mean(0), atol=1e-5)
    own = h0.flatten(1) + h0.flatten(1).norm(dim=1, keepdim=True) * torch.nn.functional.normalize(unit.mean(0), dim=0)
    assert not torch.allclose(landed[0], own.mean(0), atol=1e-3)  # not the shared direction of all three
    # one image has no others: it keeps its own change rather than getting none
    _, alone, _ = solution._transfer(_LinearHead(w), h0[:1], delta[:1], torch.zeros(1, dtype=torch.long))
    assert torch.allclose(alone[0], h0[0].flatten() + h0[0].norm() * unit[0], atol=1e-5)


def test_images_left_out_of_a_class_do_not_shape_its_direction_or_score(monkeypatch):
    """keep (HYP['exclude_own']: a class's own images out): the statistic, landing point and refined
    direction are those of the kept images alone, and change when the left-out images count."""
    monkeypatch.setitem(solution.HYP, 'alphas', (0.5, 1.0))
    g = torch.Generator().manual_seed(2)
    d = 8
    w = torch.randn(3, d, generator=g)
    h0 = torch.randn(5, d, 1, 1, generator=g)
    delta = torch.randn(10, d, 1, 1, generator=g)  # two classes, five images each
    target = torch.tensor([0, 2]).repeat_interleave(5)
    keep = torch.tensor([[True, False, True, True, False], [True, True, True, True, True]])
    for refine in (0, 3):  # the refinement's objective sums the kept images' margins only
        stats, landed, _ = solution._transfer(_LinearHead(w), h0, delta, target, refine=refine, keep=keep)
        kept = keep[0]
        alone, alone_landed, _ = solution._transfer(_LinearHead(w), h0[kept], delta[:5][kept], target[:5][kept], refine=refine)
        assert math.isclose(stats[0], alone[0], rel_tol=1e-5)
        assert torch.allclose(landed[0], alone_landed[0], atol=1e-5)
        every, _, _ = solution._transfer(_LinearHead(w), h0, delta[5:], target[5:], refine=refine)
        assert math.isclose(stats[1], every[0], rel_tol=1e-5)  # a row that keeps all is the release's
        both, _, _ = solution._transfer(_LinearHead(w), h0, delta, target, refine=refine)
        assert not math.isclose(stats[0], both[0], rel_tol=1e-3)  # the left-out images would have counted


def test_own_floor_gives_every_class_a_share_of_its_own_images_margin(monkeypatch):
    """HYP['own_floor']: S -> (1 - 1/K) S + own / K before the landing factor and the log; off, the own
    margins enter only through own_norm."""
    runs = [([1.0, 0.0, 2.0], [1.0, 1.0, 0.5], [1.0, 1.0, 1.0])]
    own = [3.0, 0.0, 6.0]
    off = solution._decide(runs, own, True)[0][0]
    assert off == pytest.approx([math.log1p(1.0), 0.0, math.log1p(1.0)])  # own unused: own_norm is off
    monkeypatch.setitem(solution.HYP, 'own_floor', True)
    on = solution._decide(runs, own, True)[0][0]
    assert on == pytest.approx([math.log1p(2 / 3 + 1), 0.0, math.log1p((4 / 3 + 2) * 0.5)])


def test_own_margins_average_each_class_over_its_own_images():
    head = _LinearHead(torch.eye(3))  # logits = the activation itself
    h = torch.tensor([[2.0, 0, 0], [4.0, 0, 0], [0, 1.0, 0], [9.0, 0, 0], [0, 0, 9.0]]).view(5, 3, 1, 1)
    labels = torch.tensor([0, 0, 1, -1, 5])  # -1 (data-free) and 5 (out of range) count for no class
    feats, y = solution._clean_features(head, h, labels, 3, batch=2)
    assert y.tolist() == [0, 0, 1]
    own = solution.own_margins(head, feats, y, 3)
    sp = torch.nn.functional.softplus
    assert own[0] == pytest.approx(float(sp(torch.tensor([2.0, 4.0])).mean()))
    assert own[1] == pytest.approx(float(sp(torch.tensor(1.0))))
    assert own[2] == 0.0  # no image of class 2: divided by 1


def test_core_keeps_each_direction_at_its_strongest_positions_renormalised():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 1, 3 * 4 * 4, generator=g)  # two classes' directions over a (3, 4, 4) map
    cut = solution._core(u, (3, 4, 4), 2 / 16)
    assert torch.allclose(cut.norm(dim=2), torch.ones(2, 1))
    for j in range(2):
        energy = u[j, 0].view(3, 16).pow(2).sum(0)
        kept = (cut[j, 0].view(3, 16).abs().sum(0) > 0).nonzero()[:, 0]
        assert set(kept.tolist()) == set(energy.topk(2).indices.tolist())
        for pos in kept.tolist():  # same shape there, only rescaled
            ratio = cut[j, 0].view(3, 16)[:, pos] / u[j, 0].view(3, 16)[:, pos]
            assert torch.allclose(ratio, ratio[0].expand(3))


class _PooledHead(_LinearHead):
    """As _LinearHead, but the penultimate features are the activation's spatial mean, as a network's."""

    def pooled(self, h):
        return h.mean((2, 3))


def test_core_factor_discounts_a_direction_spread_over_positions(monkeypatch):
    monkeypatch.setitem(solution.HYP, 'refine', 0.0)  # refined, the cut is not scored (solution._cuts)
    monkeypatch.setitem(solution.HYP, 'alphas', (1.0,))
    monkeypatch.setitem(solution.HYP, 'core', 1.0)
    g = torch.Generator().manual_seed(3)
    c = 4
    w = 10 * torch.randn(2, c, generator=g)  # margins well above softplus's floor
    toward0 = (w[0] - w[1]).view(c, 1)
    h0 = 0.1 * torch.randn(6, c, 4, 4, generator=g)
    # class 0: every image changes the same two positions; class 1 (towards class 0 too, so equally
    # effective uncut): each image changes its own two positions, so the mean direction is spread out
    here = torch.zeros(6, c, 16)
    here[:, :, [0, 1]] = toward0
    spread = torch.zeros(6, c, 16)
    for i in range(6):
        spread[i, :, [2 * i, 2 * i + 1]] = toward0
    delta = torch.cat([here, spread]).view(12, c, 4, 4)
    target = torch.zeros(12, dtype=torch.long)  # both pushed towards class 0
    stats, _, cut = solution._transfer(_PooledHead(w), h0, delta, target, area=2 / 16)
    factors = solution.core_factors(stats, cut)
    assert factors[0] == pytest.approx(1.0, abs=1e-3)  # one patch at one place: cutting keeps it
    assert factors[1] < 0.6  # spread over 12 positions: cut to 2, it loses its effect
    assert solution.core_factors(stats, None) == [1.0, 1.0]
    monkeypatch.setitem(solution.HYP, 'core', 0.5)  # the setting is the factor's exponent
    assert [float(f) for f in solution.core_factors(stats, cut)] == pytest.approx([float(f) ** 0.5 for f in factors])
    monkeypatch.setitem(solution.HYP, 'core', 0.0)
    assert solution._transfer(_PooledHead(w), h0, delta, target, area=2 / 16)[2] is None  # off: not computed


def test_refine_ascends_each_shared_direction_and_keeps_it_to_its_patch(monkeypatch):
    """_refine moves a poor start (a random direction) uphill on the images' mean softplus margin under
    the one direction, at the norms in HYP['alphas'], and keeps it unit-norm and to `area` of the
    positions; with no steps it returns the start unchanged, and _transfer's statistic follows it.
    Scattered positions here (HYP['window'] off); the window has its own test below."""
    monkeypatch.setitem(solution.HYP, 'window', False)
    g = torch.Generator().manual_seed(5)
    c, n = 4, 6
    w = 5 * torch.randn(3, c, generator=g)  # margins well above softplus's floor
    head = _PooledHead(w)
    h0 = torch.randn(n, c, 4, 4, generator=g)
    target = torch.tensor([0, 2]).repeat_interleave(n)
    u0 = torch.nn.functional.normalize(torch.randn(2, 1, c * 16, generator=g), dim=2)

    def mean_margin(u):
        norm = h0.flatten(1).norm(dim=1)[None, :, None]
        out = 0
        for alpha in solution.HYP['alphas']:
            h = (h0.flatten(1)[None] + alpha * norm * u).view(2 * n, c, 4, 4)
            out = out + torch.nn.functional.softplus(solution.margin(head.logits(h), target)).view(2, n).mean(1)
        return out
    assert torch.equal(solution._refine(head, h0, u0, target, 2 / 16, 0), u0)
    u = solution._refine(head, h0, u0, target, 2 / 16, 20)
    assert u.shape == u0.shape and torch.allclose(u.norm(dim=2), torch.ones(2, 1))
    assert ((u.view(2, c, 16).pow(2).sum(1) > 0).sum(1) == 2).all()  # 2 of 16 positions
    assert (mean_margin(u) > 1.5 * mean_margin(u0)).all(), (mean_margin(u), mean_margin(u0))
    delta = u0[:, 0].repeat_interleave(n, 0).view(2 * n, c, 4, 4)  # every image's change: the start
    plain = solution._transfer(head, h0, delta, target, 2 / 16)[0]
    refined = solution._transfer(head, h0, delta, target, 2 / 16, 20)[0]
    assert (refined > plain).all()


def test_landing_is_small_on_the_class_own_images_and_large_off_them():
    feats = torch.tensor([[2.0, 0], [4.0, 0], [0, 3.0], [0, -3.0], [-3.0, 0], [-3.0, 0]])  # mean (0, 0)
    y = torch.tensor([0, 0, 1, 1, 3, 3])
    landed = torch.tensor([[9.0, 0], [0, 0.5], [5.0, 5.0], [0, 3.0]])
    far = solution.landing(landed, feats, y, 4)
    assert far[0] == pytest.approx(6.0 / (9.0 + 3.0))  # 3x as far out on the class's line: (3-1)/(3+1)
    assert far[1] == pytest.approx(1.0)  # class 1's images centre on the mean: any landing is off them
    assert far[2] == 1.0  # no image of class 2: neutral
    assert far[3] == pytest.approx(float(torch.tensor([3.0, 3.0]).norm()) / 6.0)  # off the line: 0.71
    assert all(0 <= f <= 1 for f in far)
    assert solution.landing(landed, None, None, 4) == [1.0] * 4  # data-free: neutral


def test_spike_measures_how_far_a_landing_drives_a_unit_past_the_clean_features():
    feats = torch.tensor([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0], [1.0, 2.0, 5.0]])  # unit 2 constant over the clean images
    sd = feats.std(0)
    landed = torch.tensor([[1.0, 2.0, 5.0],     # the clean mean: no unit out
                           [7.0, 2.0, 5.0],     # unit 0 six clean sds out
                           [-9.0, -9.0, 5.0],   # below the clean mean everywhere: clamped to 0
                           [1.0, 2.0, 5.001]])  # the constant unit moved a hair: the floor keeps it finite
    z = solution.spike(landed, feats)
    assert z[0] == pytest.approx(0.0) and z[2] == 0.0
    assert z[1] == pytest.approx(6.0 / sd[0].item())
    assert math.isfinite(z[3]) and z[3] > z[1]  # the floor is 1e-6 of the largest sd: any move there is far
    assert solution.spike(landed, feats[:1])[1] > 0  # one clean image: no sd, still defined


def test_decide_takes_the_smallest_of_three_p_values_sidak_corrected(monkeypatch):
    monkeypatch.setitem(solution.HYP, 'log', False)  # the statistics as given
    k = 10
    flat = [1.0 + 0.1 * i for i in range(k)]
    runs = [(flat, [1.0] * k, [1.0] * k), (flat, [1.0] * k, [1.0] * k)]
    spikes = [0.5 + 0.05 * i for i in range(k)]
    spikes[4] = 40.0  # one class drives a unit far out; the two margin tests see nothing
    _, _, p2, p_patch, test2, _ = solution._decide(runs, [0.0] * k, True)
    _, _, p3, p_patch3, test3, judged = solution._decide(runs, [0.0] * k, True, spikes)
    assert test2 != 'spike' and test3 == 'spike' and judged == spikes and p_patch3 == p_patch
    assert p3 == pytest.approx(1 - (1 - solution.max_p_value(spikes)) ** 3) and p3 < 0.08 < p2
    _, _, p1, _, _, _ = solution._decide(runs[:1], [0.0] * k, True, None)
    assert p1 == solution.max_p_value(flat)  # one test: no correction at all


def _count_transfers(monkeypatch):
    """Replace _transfer by a recorder: the i-th call returns statistics i + 1 and landing points i + 1."""
    calls = []

    def fake(split, h0, delta, target, area=0.0, refine=0, core=None, keep=None):
        calls.append(delta.abs().sum().item())
        k = len(delta) // len(h0)
        return torch.full((k,), float(len(calls))), torch.full((k, 3), float(len(calls))), None
    monkeypatch.setattr(solution, '_transfer', fake)
    return calls


def _snapshot_run(monkeypatch, deadline):
    """Two snapshots (half-way and at the end) of a 4-step run of two classes on a linear head."""
    calls = _count_transfers(monkeypatch)
    monkeypatch.setitem(solution.HYP, 'snapshots', (0.5, 1.0))
    g = torch.Generator().manual_seed(0)
    head = _LinearHead(torch.randn(3, 4, generator=g))
    h0 = torch.randn(2, 4, 1, 1, generator=g)
    stats, landed, _ = solution._class_statistics(head, h0, torch.tensor([0, 1]), [0, 2], 4, deadline)
    return calls, stats, landed


def test_snapshots_average_the_transfer_statistic_over_the_marked_steps(monkeypatch):
    calls, stats, landed = _snapshot_run(monkeypatch, float('inf'))
    assert len(calls) == 2 and 0 < calls[0] < calls[1]  # after steps 2 and 4; the change keeps growing
    assert stats == [1.5, 1.5] and landed.tolist() == [[1.5] * 3] * 2  # the mean of the two


def test_a_deadline_stop_takes_the_state_reached(monkeypatch):
    calls, stats, _ = _snapshot_run(monkeypatch, 0.0)
    assert len(calls) == 1 and stats == [1.0, 1.0]  # one step ran; no mark reached; its state counts


def test_contrast_lifts_a_class_reachable_densely_but_not_with_a_patch():
    patch = [4.0, 3.0, 0.05, 5.0, 4.0]  # class 2: the hardest to reach with a patch...
    dense = [4.0, 3.0, 6.0, 5.0, 4.0]   # ...and the easiest with a dense change
    c = solution.contrast(patch, dense)
    assert max(range(5), key=c.__getitem__) == 2
    assert solution.max_p_value(c) < solution.max_p_value(dense)  # an outlier only in the contrast
    # a class easy both ways (a naturally easy class) stands out less in the contrast than in either pass
    both = [1.0, 1.5, 8.0, 0.8, 2.0]
    assert solution.max_p_value(solution.contrast(both, both)) > 100 * solution.max_p_value(both)
    # each pass's overall scale cancels: only the classes' standing within a pass matters
    assert solution.contrast([2 * p for p in patch], [10 * d for d in dense]) == pytest.approx(c)
    assert solution.contrast([0.0] * 3, [0.0] * 3) == [0.0] * 3  # all zero: no division by zero


def test_contrast_power_discounts_classes_a_patch_also_reaches(monkeypatch):
    """q = HYP['contrast_power'] in D~ / (P~ + 1) ** q. A class a patch cannot reach (P~ near 0, a
    clean-label trigger's target) keeps its dense standing whatever q is; a class that is easy both
    ways (a naturally easy one) falls as q grows. Here, at q = 1, the easy class 0 still tops the
    contrast; at q = 2 the unreachable class 2 does."""
    patch = [3.0, 1.0, 0.0, 1.0, 1.0]  # mean 1.2: P~ = 2.5 for class 0, 0 for class 2
    dense = [9.0, 1.0, 2.5, 1.0, 1.0]  # class 0 easy both ways, class 2 only densely
    monkeypatch.setitem(solution.HYP, 'contrast_cap', False)  # the power alone (the cap: the next tests)
    monkeypatch.setitem(solution.HYP, 'contrast_power', 1.0)
    one = solution.contrast(patch, dense)
    monkeypatch.setitem(solution.HYP, 'contrast_power', 2.0)
    two = solution.contrast(patch, dense)
    assert max(range(5), key=one.__getitem__) == 0 and max(range(5), key=two.__getitem__) == 2
    assert two[2] == pytest.approx(one[2])  # P~ = 0: q does not matter
    assert two[0] == pytest.approx(one[0] / 3.5)  # divided once more by P~ + 1
    monkeypatch.setitem(solution.HYP, 'contrast_power', 0.0)  # q = 0: the dense statistics, normalised
    assert solution.contrast(patch, dense) == pytest.approx([d / 2.9 for d in dense])


def test_contrast_cap_discounts_a_class_below_the_mean_dense_standing(monkeypatch):
    """HYP['contrast_cap']: D~ / (P~ + 1) ** q times min(1, D~). Class 2 is out of a patch's reach and below
    the mean dense standing: without the cap it tops the contrast on the first alone; with it, class 4,
    reached densely far better than the mean and poorly with a patch, does. Classes at or above the mean
    dense standing keep their values."""
    patch = [2.0, 2.0, 0.0, 2.0, 0.8]  # mean 1.36: class 2 at P~ = 0, class 4 at about 0.59
    dense = [1.0, 1.0, 0.8, 1.0, 1.7]  # mean 1.1: class 2 at D~ about 0.73, class 4 about 1.55
    monkeypatch.setitem(solution.HYP, 'contrast_cap', False)
    plain = solution.contrast(patch, dense)
    monkeypatch.setitem(solution.HYP, 'contrast_cap', True)
    capped = solution.contrast(patch, dense)
    assert max(range(5), key=plain.__getitem__) == 2 and max(range(5), key=capped.__getitem__) == 4
    standing = [d / 1.1 for d in dense]
    assert capped == pytest.approx([c * min(1.0, s) for c, s in zip(plain, standing)])
    assert capped[4] == pytest.approx(plain[4]) and capped[2] < plain[2]


def test_decide_caps_the_contrast_by_the_dense_statistic_before_the_log(monkeypatch):
    """Under step 4's log the dense statistics 24 and 50 stand at about 0.92 and 1.12 of their mean, before
    it at 0.72 and 1.49: _decide's cap takes the standing before the log, so class 3 (out of the patch's
    reach, densely below the average) is discounted by about 0.72, the rest of the contrast as uncapped."""
    monkeypatch.setitem(solution.HYP, 'log', True)
    monkeypatch.setitem(solution.HYP, 'own_floor', False)
    k = 4
    patch = [2.0, 2.0, 2.0, 0.0]
    dense = [30.0, 30.0, 50.0, 24.0]
    runs = [(patch, [1.0] * k, [1.0] * k), (dense, [1.0] * k, [1.0] * k)]
    monkeypatch.setitem(solution.HYP, 'contrast_cap', False)
    plain = solution._decide(runs, [0.0] * k, True)[1]
    monkeypatch.setitem(solution.HYP, 'contrast_cap', True)
    capped = solution._decide(runs, [0.0] * k, True)[1]
    standing = [d / (sum(dense) / k) for d in dense]
    assert capped == pytest.approx([c * min(1.0, s) for c, s in zip(plain, standing)])
    assert capped[3] == pytest.approx(24 / 33.5 * plain[3]) and capped[2] == pytest.approx(plain[2])


def test_the_own_gate_counts_the_contrast_only_where_its_top_class_is_held_weakly(monkeypatch):
    """HYP['contrast_own'] = r: the contrast test counts only where its top class's own margin is at most r
    times the classes' mean; uncounted, the p-value is the patch test's, still Sidak-corrected over two.
    Class 3 is out of a patch's reach and far ahead densely: the contrast finds it."""
    monkeypatch.setitem(solution.HYP, 'own_floor', False)
    monkeypatch.setitem(solution.HYP, 'contrast_cap', False)
    k = 10
    patch = [1.0 + 0.1 * i for i in range(k)]
    patch[3] = 0.0
    dense = [10.0 + 0.5 * i for i in range(k)]
    dense[3] = 200.0
    runs = [(patch, [1.0] * k, [1.0] * k), (dense, [1.0] * k, [1.0] * k)]
    weak, held = [8.0] * k, [8.0] * k
    weak[3], held[3] = 0.5, 9.0  # 0.5 / 7.25 = 0.07 of the mean; 9 / 8.1 = 1.1
    monkeypatch.setitem(solution.HYP, 'contrast_own', 0.0)
    _, c, p_off, p_patch, test_off, _ = solution._decide(runs, held, True)
    assert test_off == 'contrast' and max(range(k), key=c.__getitem__) == 3 and p_off < 0.08
    monkeypatch.setitem(solution.HYP, 'contrast_own', 0.15)
    _, _, p_weak, _, test_weak, _ = solution._decide(runs, weak, True)
    assert (p_weak, test_weak) == (p_off, 'contrast')  # a class held weakly (SIG's target): counted
    _, c_held, p_held, p_patch_held, test_held, judged = solution._decide(runs, held, True)
    assert test_held == 'patch' and judged[3] < max(judged) and c_held == pytest.approx(c)  # the contrast still reported
    assert p_held == pytest.approx(1 - (1 - p_patch_held) ** 2) and p_held > 0.08  # Sidak over both tests that ran
    assert solution._decide(runs, [0.0] * k, True)[2] == p_off  # no own margins (data-free): always counted


def test_keep_window_keeps_the_one_square_window_with_the_most_energy():
    """_keep_window zeroes each row outside one square window of side round(sqrt(area * H * W)): the
    window whose summed energy is the largest of all windows, values inside untouched."""
    g = torch.Generator().manual_seed(3)
    c, h, w = 3, 8, 8
    v = 0.1 * torch.randn(2, c * h * w, generator=g)
    v.view(2, c, h, w)[0, :, 1:5, 2:6] += 2.0  # row 0: a 4 x 4 block of energy
    v.view(2, c, h, w)[1, :, 4:8, 4:8] += 1.0  # row 1: another block, plus strong scattered positions
    v.view(2, c, h, w)[1, :, 0, 0] += 3.0
    v.view(2, c, h, w)[1, :, 0, 7] += 3.0
    before = v.clone()
    energy = before.view(2, c, h, w).pow(2).sum(1)
    solution._keep_window(v, (c, h, w), 16 / 64)  # side 4
    kept = v.view(2, c, h, w).pow(2).sum(1) > 0
    for i, (r0, c0) in enumerate([(1, 2), (4, 4)]):
        window = torch.zeros(h, w, dtype=torch.bool)
        window[r0:r0 + 4, c0:c0 + 4] = True
        assert torch.equal(kept[i], window)
        assert torch.equal(v[i].view(c, h, w)[:, window], before[i].view(c, h, w)[:, window])
        best = max(energy[i, r:r + 4, s:s + 4].sum().item() for r in range(5) for s in range(5))
        assert energy[i][window].sum().item() == pytest.approx(best)
    assert (energy[1][~kept[1]].topk(2).values > energy[1][kept[1]].max()).all()  # _keep_area would keep those


def test_window_keeps_the_refined_patch_direction_in_one_square(monkeypatch):
    """With HYP['window'] the refinement's direction lies inside one square of side sqrt(area * H * W)."""
    g = torch.Generator().manual_seed(5)
    c, n = 4, 6
    head = _PooledHead(5 * torch.randn(3, c, generator=g))
    h0 = torch.randn(n, c, 4, 4, generator=g)
    target = torch.tensor([0, 2]).repeat_interleave(n)
    u0 = torch.nn.functional.normalize(torch.randn(2, 1, c * 16, generator=g), dim=2)
    monkeypatch.setitem(solution.HYP, 'window', True)
    u = solution._refine(head, h0, u0, target, 4 / 16, 10)
    assert torch.allclose(u.norm(dim=2), torch.ones(2, 1))
    kept = u.view(2, c, 4, 4).pow(2).sum(1) > 0
    for row in kept:
        rows, cols = row.nonzero(as_tuple=True)
        assert len(rows) == 4 and rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1  # a 2 x 2 square


def test_the_scale_floor_keeps_a_small_lead_over_near_zero_statistics_from_being_an_outlier(monkeypatch):
    """Statistics that all sit near 0 fit a scale near 0, and a class a little above them is called an
    outlier; HYP['scale_floor'] sets the least spread that counts. A large lead stays an outlier."""
    others = [1e-4 * i for i in range(42)]  # 43 classes, spread 0 to 0.004
    monkeypatch.setitem(solution.HYP, 'scale_floor', 0.0)
    assert solution.max_p_value(others + [0.05]) < 1e-6
    monkeypatch.setitem(solution.HYP, 'scale_floor', 0.1)
    assert solution.max_p_value(others + [0.05]) > 0.5
    assert solution.max_p_value(others + [3.0]) < 1e-6
    wide = [0.1 * i for i in range(42)] + [7.0]  # a fitted scale of 2.05: the floor does not bind
    floored = solution.max_p_value(wide)
    monkeypatch.setitem(solution.HYP, 'scale_floor', 0.0)
    assert floored == solution.max_p_value(wide) and 0.01 < floored < 0.9


def test_null_fit_leaves_out_the_smallest_others_but_keeps_two():
    stats = [0.0, 5.0, 5.5, 6.0, 6.5, 20.0]  # the largest, 20, is never a null point
    assert solution.null_fit(stats) == solution.exponential_fit(stats[:5])
    assert solution.null_fit(stats, trim=1) == pytest.approx((5.0, 0.75))
    assert solution.null_fit(stats, trim=9) == pytest.approx((6.0, 0.25))  # at least two null points remain
    assert solution.max_p_value([0.0, 5.0, 1.0], trim=2) == solution.max_p_value([0.0, 5.0, 1.0])  # k = 3: nothing to leave out


def test_trimmed_null_ignores_a_low_outlier_and_keeps_its_rate_on_exponential_draws():
    # One class far below the rest sets the untrimmed null's loc and widens its scale, hiding a clear lead.
    x = [-4.0, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 3.0]
    assert solution.max_p_value(x) > 0.5 and solution.max_p_value(x, trim=2) < 0.02
    # The exponential forgets its start: on exponential statistics the trimmed exact null keeps its level,
    # and the trimmed plug-in fires about as often as the untrimmed one.
    g = torch.Generator().manual_seed(3)
    draws = [torch.empty(10, dtype=torch.float64).exponential_(generator=g) for _ in range(3000)]
    rate = {(null, t): sum(solution.max_p_value(d, null=null, trim=t) < 0.08 for d in draws) / len(draws)
            for null in ('plug-in', 'exact') for t in (0, 2)}
    assert 0.06 < rate['exact', 2] < 0.10
    assert abs(rate['plug-in', 2] - rate['plug-in', 0]) < 0.04


def test_null_leaves_out_the_named_classes_but_always_tests_the_largest():
    # Two classes near 0 (no image of theirs in the draw) set the plain null's loc and widen its scale.
    x = [0.0, 0.9, 1.0, 1.1, 0.01, 1.2, 1.3, 1.4, 1.5, 3.0]
    plain, left = solution.max_p_value(x), solution.max_p_value(x, leave_out=(0, 4))
    assert plain > 0.3 and left < 0.02
    assert left == solution.max_p_value(x, trim=2)  # here the two left out are the two smallest
    assert solution.null_fit(x, leave_out=(0, 4)) == solution.exponential_fit([0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    assert solution.max_p_value(x, leave_out=(0, 4, 9)) == left  # the largest is tested whatever its class
    assert solution.max_p_value(x, leave_out=(2, 5)) == pytest.approx(  # others than the smallest: their own fit
        1 - (1 - math.exp(-(3.0 - 0.0) / (sum([0.0, 0.9, 0.01, 1.1, 1.3, 1.4, 1.5]) / 7))) ** 10)
    assert solution.max_p_value(x, leave_out=range(1, 9)) == plain  # fewer than two points left: all of them
    assert solution.max_p_value(x, null='exact', leave_out=(0, 4)) == solution.max_p_value(x, null='exact', trim=2)


@pytest.mark.parametrize('setting, labels, absent', [
    (True, [0, 1, 2, 3, 4, 5], (6, 7, 8, 9)),  # six of ten classes: their own images count (not sparse)
    (True, [0, 1, 2, 3], ()),                   # fewer than half: own images left out (exclude_own 'sparse')
    (True, list(range(10)) + [3, 4], ()),       # every class has one
    (True, [-1] * 8, ()),                       # no labels: nothing known
    (False, [0, 1, 2, 3, 4, 5], ()),            # off
])
def test_absent_names_the_classes_without_an_image_in_a_draw_where_own_images_count(monkeypatch, setting, labels, absent):
    monkeypatch.setitem(solution.HYP, 'null_absent', setting)
    assert solution._absent(labels, 10) == absent
    monkeypatch.setitem(solution.HYP, 'exclude_own', True)  # own images left out at any size: nothing to leave out
    assert solution._absent(labels, 10) == ()


def test_decide_leaves_the_absent_classes_out_of_the_patch_null_only(monkeypatch):
    monkeypatch.setitem(solution.HYP, 'log', False)  # the statistics as given
    monkeypatch.setitem(solution.HYP, 'contrast_own', 0.0)  # the contrast always counted
    monkeypatch.setitem(solution.HYP, 'contrast_cap', False)
    k = 10
    patch = [0.0, 0.9, 1.0, 1.1, 0.01, 1.2, 1.3, 1.4, 1.5, 3.0]  # classes 0 and 4: no image in the draw
    dense = [1.0 + 0.1 * i for i in range(k)]
    runs = [(patch, [1.0] * k, [1.0] * k), (dense, [1.0] * k, [1.0] * k)]
    _, contrast, p, p_patch, _, _ = solution._decide(runs, [1.0] * k, True)
    _, contrast_a, p_a, p_patch_a, test, judged = solution._decide(runs, [1.0] * k, True, absent=(0, 4))
    assert p_patch == solution.max_p_value(patch) > 0.3
    assert p_patch_a == solution.max_p_value(patch, leave_out=(0, 4)) < 0.02
    assert contrast_a == contrast and test == 'patch' and judged == patch
    assert p_a == pytest.approx(1 - (1 - min(p_patch_a, solution.max_p_value(contrast))) ** 2)
    assert p_a < solution.P_THRESHOLD < p
