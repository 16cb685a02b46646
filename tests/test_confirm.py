"""The second test (HYP['confirm']): the seed's largest margin at layer1[0], and how it enters the verdict:
both p-values below the threshold (HYP['combine'] 'both'), or either ('either'), or either where the classes agree
('agree'), or either and their Fisher combination where the patch pass agrees ('fisher'); HYP['confirm_landing']
discounts its classes as the release's landing factor does."""
import math

import pytest
import torch

import solution
from conftest import CIFAR_LIKE


def test_margin_search_is_the_seed_reference_at_the_same_images(toy_model, monkeypatch):
    """Same images, same steps, no early stop: the release's sign steps give the seed reference's margins."""
    from bench.baselines import seed
    monkeypatch.setitem(seed.HYP, 'steps', 20)
    monkeypatch.setitem(seed.HYP, 'warmup', 2)  # the release warms up for int(0.1 * steps) steps
    monkeypatch.setitem(seed.HYP, 'tol', 0.0)
    monkeypatch.setitem(solution.HYP, 'confirm_quantile', 1.0)  # the seed's statistic: the largest margin
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    net = toy_model.requires_grad_(False)
    with torch.enable_grad():
        ref = [seed.class_statistic(net, x, t) for t in range(10)]
        split = solution._Split(net, 2)
        ours, landed = solution._margin_search(split, split.features(x), 10, 3, 20, math.inf)
    assert [len(t) for t in landed] == [3, 3, 3, 1] and landed[0].shape[1] == split.linear.in_features
    assert len(ours) == 10 and ours != [ours[0]] * 10
    assert ours == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_margin_search_reads_early_and_over_the_other_classes_images(toy_model, monkeypatch):
    """Each image is its own variable, so the batch's statistic (here the largest margin) is the largest of
    the images' own searches: with labels, over the images of other classes only. read = 0.25 runs a
    quarter of the schedule's forward passes and reads different margins than the schedule's end."""
    monkeypatch.setitem(solution.HYP, 'confirm_quantile', 1.0)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    split = solution._Split(toy_model.requires_grad_(False), 2)
    calls, real = [0], split.pooled
    split.pooled = lambda h: (calls.__setitem__(0, calls[0] + 1), real(h))[1]
    with torch.enable_grad():
        h0 = split.features(x)
        alone = [solution._margin_search(split, h0[i:i + 1], 4, 4, 16, math.inf, 0.25)[0] for i in range(5)]
        ahead = max(range(5), key=lambda i: alone[i][0])  # labelled class 0: the image that reaches it furthest
        labels = torch.tensor([1, 2, 3, 1, 2])
        labels[ahead] = 0
        calls[0] = 0
        early, _ = solution._margin_search(split, h0, 4, 4, 16, math.inf, 0.25, labels)
        assert calls[0] == 4  # one chunk of 4 classes, 4 of the 16 steps
        late, _ = solution._margin_search(split, h0, 4, 4, 16, math.inf, 1.0, labels)
    for c in range(4):
        assert early[c] == pytest.approx(max(alone[i][c] for i in range(5) if labels[i] != c), rel=1e-5, abs=1e-6)
    assert early[0] < alone[ahead][0]  # class 0's own image is left out
    assert late != pytest.approx(early)


def test_quantile_margins_reads_the_quantile_of_the_images_kept():
    """Rows: margins of 5 images towards 2 classes, -inf where an image is left out (its own class). At q = 1
    the largest (the seed's); at q = 0.25 the lower quartile of the finite ones, by linear interpolation,
    and the image nearest it. A naturally easy class reached far by one look-alike (row 1) falls below a
    class every image reaches (row 0) at the quartile, not at the largest."""
    inf = math.inf
    m = torch.tensor([[5.0, 4.0, 6.0, -inf, 5.5],
                      [0.5, 30.0, 0.2, 1.0, -inf]])
    best, at = solution.quantile_margins(m, 1.0)
    assert best.tolist() == [6.0, 30.0] and at.tolist() == [2, 1]
    best, at = solution.quantile_margins(m, 0.25)
    assert best.tolist() == pytest.approx([4.75, 0.425]) and at.tolist() == [0, 0]
    assert best[0] > best[1]
    one = torch.tensor([[-inf, 3.0, -inf]])  # a single finite margin is every quantile of it
    assert solution.quantile_margins(one, 0.25)[0].tolist() == [3.0] and solution.quantile_margins(one, 0.25)[1].tolist() == [1]


def test_margin_search_quantile_matches_the_per_image_searches(toy_model, monkeypatch):
    """Under HYP['confirm_quantile'] q each class's statistic is the q-quantile of the margins its images
    reach searched one by one, the own class's images out (HYP['confirm_quantile_min'] 0: at any image count)."""
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    split = solution._Split(toy_model.requires_grad_(False), 2)
    monkeypatch.setitem(solution.HYP, 'confirm_quantile', 0.25)
    monkeypatch.setitem(solution.HYP, 'confirm_quantile_min', 0)
    with torch.enable_grad():
        h0 = split.features(x)
        alone = torch.tensor([solution._margin_search(split, h0[i:i + 1], 3, 3, 10, math.inf)[0] for i in range(6)]).T
        got, _ = solution._margin_search(split, h0, 3, 3, 10, math.inf, 1.0, labels)
    want = [alone[c][labels != c].quantile(0.25).item() for c in range(3)]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert got != pytest.approx([alone[c][labels != c].max().item() for c in range(3)])


def test_a_few_images_margin_search_takes_the_largest_margin(toy_model, monkeypatch):
    """With fewer images than HYP['confirm_quantile_min'] each class's statistic is the largest margin over the
    other classes' images (the quartile of 2-4 values is nearly their least); with as many or more, the
    quantile. The same images and searches either way: only the reading changes."""
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    split = solution._Split(toy_model.requires_grad_(False), 2)
    monkeypatch.setitem(solution.HYP, 'confirm_quantile', 0.25)

    def search(least):
        monkeypatch.setitem(solution.HYP, 'confirm_quantile_min', least)
        with torch.enable_grad():
            return solution._margin_search(split, split.features(x), 3, 3, 10, math.inf, 1.0, labels)[0]
    quartile, largest = search(0), search(7)
    assert search(6) == quartile  # 6 images, not fewer than 6
    monkeypatch.setitem(solution.HYP, 'confirm_quantile', 1.0)
    assert largest == search(0)
    assert largest != pytest.approx(quartile) and all(a >= b for a, b in zip(largest, quartile))


def test_read_early_the_margin_test_keeps_its_schedule_and_plans_fewer_images(monkeypatch):
    """Read at 0.1 of 100 steps, each image costs 10 steps a class: 30 images of 10 classes need 3000 s at
    1 s a step; with less, 12, then the smallest size, always on the 100-step schedule. Read at the
    end, the release's ladder (steps first). (With HYP['confirm_min'] 0; its skip: the next test.)"""
    monkeypatch.setitem(solution.HYP, 'confirm_read', 0.1)
    monkeypatch.setitem(solution.HYP, 'confirm_min', 0)
    monkeypatch.setitem(solution.HYP, 'early_read', 0.0)  # the first search alone (both: the test after the next)
    assert solution._confirm_plan(1.0, 3000.0, 10, 40) == (30, 100)
    assert solution._confirm_plan(1.0, 2999.0, 10, 40) == (12, 100)
    assert solution._confirm_plan(1.0, 1.0, 10, 40) == (2, 100)
    assert solution._confirm_plan(1.0, 1e9, 10, 5) == (5, 100)  # no more images than the folder holds
    monkeypatch.setitem(solution.HYP, 'confirm_read', 1.0)
    assert solution._confirm_plan(1.0, 2999.0, 10, 40) == solution._plan(1.0, 2999.0, 10, 40, max_steps=100)
    assert solution._confirm_plan(1.0, 2999.0, 10, 40)[1] < 100


def test_confirm_min_skips_the_margin_test_where_too_few_images_fit(monkeypatch):
    """HYP['confirm_min'] k: the plan stands where at least k images fit (or all the folder holds),
    else None; where not even the smallest fits, None at any k > 0, the smallest plan at 0."""
    monkeypatch.setitem(solution.HYP, 'confirm_read', 0.1)
    monkeypatch.setitem(solution.HYP, 'confirm_min', 8)
    assert solution._confirm_plan(1.0, 2999.0, 10, 40) == (12, 100)
    assert solution._confirm_plan(1.0, 799.0, 10, 40) is None  # 4 fit, not 8
    assert solution._confirm_plan(1.0, 499.0, 10, 5) is None  # 4 of the folder's 5 fit: fewer than 8 and than 5
    assert solution._confirm_plan(1.0, 1e9, 10, 5) == (5, 100)  # all the folder holds, though under 8
    monkeypatch.setitem(solution.HYP, 'confirm_min', 2)
    assert solution._confirm_plan(1.0, 799.0, 10, 40) == (4, 100)
    assert solution._confirm_plan(1.0, 199.0, 10, 40) is None  # not even 2 images fit
    monkeypatch.setitem(solution.HYP, 'confirm_min', 0)
    assert solution._confirm_plan(1.0, 199.0, 10, 40) == (2, 100)  # runs anyway; the deadline stops it
    monkeypatch.setitem(solution.HYP, 'confirm_read', 1.0)
    monkeypatch.setitem(solution.HYP, 'confirm_min', 2)
    assert solution._confirm_plan(1.0, 2999.0, 10, 40) == solution._plan(1.0, 2999.0, 10, 40, max_steps=100)
    assert solution._confirm_plan(1.0, 1.0, 10, 40) is None  # the ladder's floor does not fit either


def _stopped_clock(monkeypatch):
    """A clock that stands at 1000 s, a 40 s budget with a quarter for the margin test, and each release
    pass run one step with no deadline: returns the list that collects the deadline each pass was given."""
    monkeypatch.setattr(solution.time, 'monotonic', lambda: 1000.0)
    monkeypatch.setitem(solution.HYP, 'budget_s', 40.0)
    monkeypatch.setitem(solution.HYP, 'confirm', 0.25)
    ends, real = [], solution._class_statistics
    monkeypatch.setattr(solution, '_class_statistics',
                        lambda split, h0, labels, classes, steps, deadline, *a: (ends.append(deadline), real(split, h0, labels, classes, 1, math.inf, *a))[1])
    return ends


def test_a_skipped_margin_test_leaves_the_release_the_whole_time(toy_model, image_folder, fast, monkeypatch):
    """Skipped (HYP['confirm_min'] more images than fit its share), no margin search runs, the release's
    passes run to the deadline and the verdict is theirs, uncorrected."""
    ends = _stopped_clock(monkeypatch)
    monkeypatch.setattr(solution, '_confirm_plan', lambda *a: None)  # as where too few images fit
    monkeypatch.setattr(solution, '_margin_search', lambda *a: pytest.fail('the skipped margin test ran'))
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert max(ends) == pytest.approx(1040.0)  # the release's passes end at the deadline, not at 3/4
    assert e['confirm_plan'] is None and e['p_margin'] is None and e['per_class_margin'] is None
    assert e['p_value'] == e['p_release'] and e['judged'] != 'margin'


def test_confirm_is_an_intersection_union_and_leaves_the_release_alone(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'confirm', 0.0)
    off = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert off['p_margin'] is None and off['per_class_margin'] is None and off['p_release'] == off['p_value']
    monkeypatch.setitem(solution.HYP, 'confirm', 0.5)
    monkeypatch.setitem(solution.HYP, 'confirm_steps', 16)
    monkeypatch.setitem(solution.HYP, 'combine', 'both')
    on = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert on['per_class'] == off['per_class'] and on['p_release'] == off['p_value']  # same plan, same release
    assert on['confirm_plan'] == (6, 16) and len(on['per_class_margin']) == 10
    assert on['p_margin'] == solution.max_p_value(on['per_class_margin'], trim=solution.HYP['confirm_trim'])
    margins = on['p_margin'] if on['p_early'] is None else 1 - (1 - min(on['p_margin'], on['p_early'])) ** 2
    assert on['p_value'] == pytest.approx(max(on['p_release'], margins))  # 'both': the early search corrected with it
    assert on['verdict'] == (0 if on['p_value'] < solution.P_THRESHOLD else 1)


@pytest.mark.parametrize('quantile_min, acting, idle', [(0, 'confirm_trim', 'confirm_trim_largest'),
                                                        (8, 'confirm_trim_largest', 'confirm_trim')])
def test_the_margin_trims_fit_its_null_without_the_smallest_others(toy_model, image_folder, fast, monkeypatch,
                                                                   quantile_min, acting, idle):
    """HYP['confirm_trim'] reaches the margin test's null where it reads a quantile, HYP['confirm_trim_largest']
    where it reads the largest margin (the toy's plan of 6 images under confirm_quantile_min 8): its
    p-value, and the null evidence reports where the margin test decides; the release's p is the same."""
    monkeypatch.setitem(solution.HYP, 'confirm_steps', 16)
    monkeypatch.setitem(solution.HYP, 'confirm_quantile_min', quantile_min)
    margins = [-6.0, -5.0, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 3.0]  # two classes far below the rest
    monkeypatch.setattr(solution, '_margin_search', lambda *a, **k: (list(margins), [torch.zeros(10, 4)]))
    monkeypatch.setitem(solution.HYP, acting, 0)
    monkeypatch.setitem(solution.HYP, idle, 2)  # the other regime's trim: no effect here
    plain = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    monkeypatch.setitem(solution.HYP, acting, 2)
    monkeypatch.setitem(solution.HYP, idle, 0)
    trimmed = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert plain['confirm_plan'][0] == 6
    assert plain['p_margin'] == solution.max_p_value(margins) > 0.5
    assert trimmed['p_margin'] == solution.max_p_value(margins, trim=2) < 0.01
    assert trimmed['p_release'] == plain['p_release'] and trimmed['judged'] == 'margin' and trimmed['target'] == 9
    assert (trimmed['null_loc'], trimmed['null_scale']) == pytest.approx(solution.null_fit(margins, trim=2))


def test_confirm_takes_its_share_of_the_budget_after_the_release(toy_model, image_folder, fast, monkeypatch):
    ends = _stopped_clock(monkeypatch)
    seen = []

    def search(split, h0, num_classes, chunk, steps, end, *a):
        seen.append(dict(split=len(split.stem), n=len(h0), steps=steps, end=end, release_ends=list(ends)))
        return [0.0] * num_classes, [torch.zeros(num_classes, split.linear.in_features)]
    monkeypatch.setattr(solution, '_margin_search', search)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert [s['split'] for s in seen] == [2, 1] and seen[-1]['end'] == 1040.0  # conv1 + layer1[0], then conv1 until the deadline
    assert max(seen[0]['release_ends']) == pytest.approx(1030.0)  # the release stops at 3/4 of the time
    assert e['confirm_plan'] == (seen[0]['n'], seen[0]['steps']) == (6, 100)  # a free clock: the top rung (10 + 5 of its steps run)
    assert e['p_margin'] == e['p_early'] == 1.0  # flat margin tests leave the release, corrected over three ('either')
    assert e['p_value'] == 1 - (1 - e['p_release']) ** 3


def _with_margins(monkeypatch, margins_of):
    """_margin_search replaced: per class, margins_of(num_classes) (the release's passes run as they are)."""
    monkeypatch.setattr(solution, '_margin_search', lambda split, h0, num_classes, *a: (
        margins_of(num_classes), [torch.zeros(num_classes, split.linear.in_features)]))


@pytest.mark.parametrize('agree', [True, False])
def test_agree_takes_the_margin_test_only_where_a_release_pass_shares_its_top_class(toy_model, image_folder, fast,
                                                                                  monkeypatch, agree):
    monkeypatch.setitem(solution.HYP, 'confirm', 0.5)
    monkeypatch.setitem(solution.HYP, 'combine', 'agree')
    monkeypatch.setitem(solution.HYP, 'early_read', 0.0)  # the mock's margins would reach the early test too
    release = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)  # its own margin test, to learn the tops
    tops = {max(range(10), key=lambda i: v[i]) for v in (release['per_class'], release['per_class_dense']) if v}
    spike = min(tops) if agree else min(set(range(10)) - tops)
    _with_margins(monkeypatch, lambda k: [1.0 + 0.01 * i for i in range(k - 1)][:spike] + [50.0] + [1.0] * (k - 1 - spike))
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert e['p_release'] == release['p_release'] and e['p_margin'] < 1e-6
    if agree:  # a far-out margin at a class the release also leads with: the margin test decides
        assert e['p_value'] == pytest.approx(1 - (1 - e['p_margin']) ** 2)
        assert e['judged'] == 'margin' and e['target'] == spike and e['verdict'] == 0
    else:  # the same margin at a class no pass leads with counts for nothing: the release alone, corrected
        assert e['p_value'] == pytest.approx(1 - (1 - e['p_release']) ** 2)
        assert e['judged'] != 'margin' and e['target'] != spike
        monkeypatch.setitem(solution.HYP, 'combine', 'either')  # plain Sidak: it counts wherever it leads
        e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
        assert e['p_value'] == pytest.approx(1 - (1 - e['p_margin']) ** 2) and e['target'] == spike


def test_fisher_two_is_the_law_of_two_uniforms_product():
    """P(U1 U2 <= t) = t (1 - ln t): checked against 200 000 products of uniform pairs, and its edges."""
    u = torch.rand(2, 200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64).prod(0)
    for t in (0.001, 0.01, 0.05, 0.3):
        assert solution.fisher_two(t, 1.0) == pytest.approx((u <= t).double().mean().item(), abs=0.003)
    assert solution.fisher_two(0.2, 0.3) == solution.fisher_two(0.3, 0.2) > 0.2 * 0.3
    assert solution.fisher_two(0.0, 0.5) == 0.0 and solution.fisher_two(1.0, 1.0) == 1.0


@pytest.mark.parametrize('agree', [True, False])
def test_fisher_adds_the_joint_p_only_where_the_patch_pass_leads_with_the_margin_class(monkeypatch, agree):
    """Two tests each near the threshold at the same class: 'fisher' takes their joint p-value, well
    below it; at another class the patch pass's lead leaves 'either' as it is."""
    patch, margins = [0.1 * i for i in range(10)], [0.2 * i for i in range(10)]
    patch[3 if agree else 4] = 2.5  # p of the patch pass alone near 0.05
    margins[3] = 5.0  # p of the margin test alone near 0.05
    p_patch, p_margin = solution.max_p_value(patch), solution.max_p_value(margins)
    assert 0.02 < p_patch < 0.08 and 0.02 < p_margin < 0.08
    p_release = 1 - (1 - p_patch) ** 2  # the release's Sidak over its two tests (the contrast flat)
    monkeypatch.setitem(solution.HYP, 'combine', 'either')
    either = solution.combine(p_release, margins, [patch, [1.0] * 10])
    decides = 'margin' if p_margin < p_release else None
    assert either == (1 - (1 - min(p_release, p_margin)) ** 2, p_margin, None, decides) and either[0] > 0.08
    monkeypatch.setitem(solution.HYP, 'combine', 'fisher')
    fisher = solution.combine(p_release, margins, [patch, [1.0] * 10])
    if agree:
        t = p_patch * p_margin
        assert fisher == (pytest.approx(t * (1 - math.log(t))), p_margin, None, 'margin') and fisher[0] < 0.02
    else:
        assert fisher == either

def test_confirm_landing_discounts_a_class_whose_best_image_lands_among_its_own(toy_model, image_folder, fast,
                                                                                 monkeypatch):
    """Two classes reach the same largest margin; the one whose best image lands on its own clean images'
    mean keeps (almost) nothing, the one that lands far off them keeps softplus of its margin."""
    feats = {}
    real = solution._clean_features
    monkeypatch.setattr(solution, '_clean_features', lambda *a: feats.setdefault('v', real(*a)))
    monkeypatch.setitem(solution.HYP, 'confirm', 0.5)
    monkeypatch.setitem(solution.HYP, 'confirm_landing', 1.0)

    def search(split, h0, num_classes, *a):
        f, y = feats['v']
        own = [f[y == c].mean(0) for c in range(num_classes)]
        far = f.mean(0) + 10 * (f.mean(0) - own[1])  # far out, on no class's side
        points = torch.stack([own[0]] + [far] * (num_classes - 1))
        return [5.0, 5.0] + [0.0] * (num_classes - 2), [points]
    monkeypatch.setattr(solution, '_margin_search', search)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    m = e['per_class_margin']
    assert m[0] == pytest.approx(0.0, abs=1e-6)  # landed on class 0's own images: discounted to nothing
    softplus5 = math.log1p(math.exp(5.0))
    assert 0.7 * softplus5 < m[1] <= softplus5 + 1e-12  # off them: kept
    assert m[2] < m[1] and e['p_margin'] == solution.max_p_value(m, trim=solution.HYP['confirm_trim'])


def test_both_needs_the_margin_test_too(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'confirm', 0.5)
    monkeypatch.setitem(solution.HYP, 'combine', 'both')
    _with_margins(monkeypatch, lambda k: [50.0] + [1.0 + 0.01 * i for i in range(k - 1)])
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert e['p_value'] == max(e['p_release'], e['p_margin']) and e['judged'] != 'margin'


@pytest.mark.parametrize('key,bad', [('combine', 'or'), ('confirm_landing', -1.0), ('confirm', -0.1), ('confirm', 1.0), ('confirm', True), ('confirm', '0.5'),
                                     ('confirm', float('nan')), ('confirm_steps', 0), ('confirm_steps', 2.5),
                                     ('confirm_steps', True), ('confirm_read', 0.0), ('confirm_read', 1.5),
                                     ('confirm_quantile', 0.0), ('confirm_quantile', 1.5), ('confirm_quantile', True),
                                     ('confirm_read', True), ('confirm_others', 'yes'), ('confirm_min', -1),
                                     ('confirm_min', 2.0), ('confirm_min', True), ('confirm_quantile_min', -1),
                                     ('confirm_quantile_min', 8.0), ('confirm_quantile_min', None),
                                     ('confirm_trim', -1), ('confirm_trim', 2.0), ('confirm_trim', True)])
def test_confirm_settings_are_checked(toy_model, image_folder, monkeypatch, key, bad):
    monkeypatch.setitem(solution.HYP, key, bad)
    with pytest.raises(ValueError, match=key):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_early_search_runs_after_the_margin_test_at_its_own_split_and_share(toy_model, image_folder, fast, monkeypatch):
    """HYP['early_read'] runs the margin search a second time, through conv1 only, read after 5 of its 100
    steps, on the same images: the first search ends at 10/15 of the time left, the early one at the
    deadline; its p-value is a third alternative (Sidak over three) and decides where it is the least."""
    ends = _stopped_clock(monkeypatch)
    monkeypatch.setitem(solution.HYP, 'early_read', 0.05)
    seen = []

    def search(split, h0, num_classes, chunk, steps, end, read, labels):
        seen.append(dict(split=len(split.stem), h0=h0, steps=steps, end=end, read=read, labels=labels))
        far = 2 if len(split.stem) == 1 else 7  # each search's own far-out class
        return [0.1 * i for i in range(num_classes - 1)][:far] + [50.0] + [0.1] * (num_classes - 1 - far), \
            [torch.zeros(num_classes, split.linear.in_features)]
    monkeypatch.setattr(solution, '_margin_search', search)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert [(s['split'], s['read'], s['steps']) for s in seen] == [(2, 0.1, 100), (1, 0.05, 100)]
    assert seen[0]['end'] == pytest.approx(1000 + 40 * 10 / 15) and seen[1]['end'] == 1040.0
    assert seen[1]['h0'].shape[1:] == seen[0]['h0'].shape[1:] and torch.equal(seen[0]['labels'], seen[1]['labels'])
    assert len(seen[1]['h0']) == len(seen[0]['h0']) == e['confirm_plan'][0]
    p_early = solution.max_p_value(e['per_class_early'])
    assert e['p_early'] == p_early and e['per_class_early'][2] == 50.0
    assert e['p_value'] == pytest.approx(1 - (1 - min(e['p_release'], e['p_margin'], p_early)) ** 3)
    assert e['judged'] in ('margin', 'early') and e['target'] == {'margin': 7, 'early': 2}[e['judged']]
    monkeypatch.setitem(solution.HYP, 'early_read', 0.0)  # off: one search, no third p-value
    seen.clear()
    off = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert len(seen) == 1 and off['p_early'] is None and off['per_class_early'] is None


def test_combine_counts_the_early_search_as_a_third_alternative(monkeypatch):
    """A far-out class in the early search alone: Sidak over three, the early test decides; 'both' takes the
    better of the two margin tests, corrected over them; without it combine is as before."""
    flat, spiked = [0.2 * i for i in range(10)], [0.2 * i for i in range(9)] + [9.0]
    p_flat, p_spiked = solution.max_p_value(flat), solution.max_p_value(spiked)
    assert p_spiked < 1e-3 < 0.5 < p_flat
    monkeypatch.setitem(solution.HYP, 'combine', 'either')
    assert solution.combine(0.3, flat, [flat], per_early=spiked) == (
        pytest.approx(1 - (1 - p_spiked) ** 3), p_flat, p_spiked, 'early')
    assert solution.combine(0.3, flat, [flat])[2:] == (None, None)
    assert solution.combine(0.3, spiked, [flat], per_early=flat)[3] == 'margin'
    monkeypatch.setitem(solution.HYP, 'combine', 'both')
    assert solution.combine(1e-5, flat, [flat], per_early=spiked)[0] == pytest.approx(1 - (1 - p_spiked) ** 2)
    assert solution.combine(0.3, flat, [flat], per_early=spiked)[0] == 0.3
    assert solution.combine(1e-5, flat, [flat])[0] == p_flat  # the margin test alone, flat: not confirmed


def test_pooled_margins_sums_each_search_standardised_by_its_own_null():
    """Each search is scaled by the exponential fitted to its other classes (loc = their least, scale =
    their mean excess): where the other classes' order differs between the searches (their noise is not
    shared), a class ahead in both stands further out in the sum than in either."""
    margin = [0.0, 1.0, 2.0, 3.0, 7.0]   # null of the others: loc 0, scale 1.5
    early = [11.5, 11.0, 10.5, 10.0, 13.0]  # loc 10, scale 0.75
    assert solution.pooled_margins(margin, early) == pytest.approx(
        [0 / 1.5 + 1.5 / 0.75, 1 / 1.5 + 1 / 0.75, 2 / 1.5 + 0.5 / 0.75, 3 / 1.5 + 0 / 0.75, 7 / 1.5 + 3 / 0.75])
    both = solution.pooled_margins(margin, early)
    assert solution.max_p_value(both) < min(solution.max_p_value(margin), solution.max_p_value(early))


def test_early_pool_makes_the_two_searches_one_test(monkeypatch):
    """With early_pool, combine corrects over two tests, the release's and the pooled searches', and names
    'pooled' where the latter decides; p_margin and p_early are still reported."""
    margin, early = [0.2 * i for i in range(9)] + [3.0], [0.3 * i for i in range(9)] + [4.5]
    pooled = solution.pooled_margins(margin, early)
    p_pool, p_margin, p_early = solution.max_p_value(pooled), solution.max_p_value(margin), solution.max_p_value(early)
    monkeypatch.setitem(solution.HYP, 'combine', 'either')
    three, two = solution.combine(0.3, margin, [margin], per_early=early), solution.combine(0.3, margin, [margin])
    monkeypatch.setitem(solution.HYP, 'early_pool', True)
    assert solution.combine(0.3, margin, [margin], per_early=early) == (
        pytest.approx(1 - (1 - p_pool) ** 2), p_margin, p_early, 'pooled')
    assert solution.combine(0.3, margin, [margin], per_early=early)[0] < three[0]
    assert solution.combine(1e-6, margin, [margin], per_early=early)[3] is None  # the release's own p decides
    assert solution.combine(0.3, margin, [margin]) == two  # without the early search: as with early_pool off
    assert two[3] == 'margin'
    assert solution.judged_margins('pooled', margin, early) == pooled


def test_early_pool_reports_the_pooled_statistics_in_evidence(toy_model, image_folder, fast, monkeypatch):
    def search(split, h0, num_classes, chunk, steps, end, read, labels):
        far = 4.0 if len(split.stem) == 1 else 6.0  # both searches lead with class 3
        return [0.3 * (i % 5) for i in range(3)] + [far] + [0.3 * (i % 5) for i in range(num_classes - 4)], \
            [torch.zeros(num_classes, split.linear.in_features)]
    monkeypatch.setattr(solution, '_margin_search', search)
    monkeypatch.setitem(solution.HYP, 'early_pool', True)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert e['per_class_pooled'] == pytest.approx(solution.pooled_margins(e['per_class_margin'], e['per_class_early']))
    assert e['judged'] == 'pooled' and e['target'] == 3 and e['statistic'] == max(e['per_class_pooled'])
    assert e['p_value'] == pytest.approx(1 - (1 - min(e['p_release'], solution.max_p_value(e['per_class_pooled']))) ** 2)
    monkeypatch.setitem(solution.HYP, 'early_pool', False)
    assert solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)['per_class_pooled'] is None


def test_the_margin_plan_prices_the_early_search_too(monkeypatch):
    """The early search's steps are priced into the margin test's plan: in the same seconds, fewer images."""
    monkeypatch.setitem(solution.HYP, 'early_read', 0.0)
    plain = solution._confirm_plan(1e-3, 1.5, 10, 30)
    monkeypatch.setitem(solution.HYP, 'early_read', 0.05)
    early = solution._confirm_plan(1e-3, 1.5, 10, 30)
    assert plain == (12, 100) and early == (8, 100)  # 10 steps an image: 12 fit 1.5 s; 15 steps: 8


@pytest.mark.parametrize('key, bad', [('early_read', -0.1), ('early_read', True), ('early_read', 1.5),
                                      ('early_split', -1), ('early_split', 1.0), ('early_pool', 'yes')])
def test_bad_early_settings_are_refused(toy_model, image_folder, monkeypatch, key, bad):
    monkeypatch.setitem(solution.HYP, key, bad)
    with pytest.raises(ValueError, match=key):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
