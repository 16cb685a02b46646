"""The contest contract of solution.py: return values, size, no side effects, no I/O, determinism."""
import copy
import os
import random
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T

import solution
from conftest import CIFAR_LIKE, ROOT
from model_arch import PreActResNet18


def test_architecture_matches_contest_keys_and_size():
    m = PreActResNet18(num_classes=10)
    sd = m.state_dict()
    assert len(sd) == 102
    assert sum(p.numel() for p in m.parameters()) == 11_171_146
    assert sd['conv1.weight'].shape == (64, 3, 3, 3)
    assert sd['layer2.0.shortcut.0.weight'].shape == (128, 64, 1, 1)
    assert sd['linear.weight'].shape == (10, 512)
    assert 'layer1.0.shortcut.0.weight' not in sd  # shape kept: no shortcut conv
    assert all(b.ind is None for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer)


def test_block_ind_hook_selects_shortcut_channels():
    torch.manual_seed(0)
    m = PreActResNet18(num_classes=3, width=4).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = m(x)
    m.layer1[0].ind = torch.arange(4)  # every channel: same network
    assert torch.allclose(m(x), ref)
    m.layer1[0].ind = torch.tensor([0, 0, 0, 0])  # one channel repeated: a different network
    assert not torch.allclose(m(x), ref)


def test_width_scales_channels_and_any_input_size_works():
    m = PreActResNet18(num_classes=43, width=16).eval()
    assert m.linear.in_features == 128
    for side in (28, 32, 64):
        assert m(torch.zeros(1, 3, side, side)).shape == (1, 43)


def test_returns_int_verdict_and_grader_adapter(toy_model, image_folder, fast):
    v = solution.detect(toy_model, 10, image_folder, CIFAR_LIKE)
    assert type(v) is int and v in (0, 1)
    assert solution.backdoor_model_detector(toy_model, 10, image_folder, CIFAR_LIKE) == 1 - v


def test_solution_is_small_and_imports_only_allowed_packages():
    path = os.path.join(ROOT, 'solution.py')
    assert os.path.getsize(path) < 1_000_000
    src = open(path).read()
    roots = set()
    for line in src.splitlines():
        words = line.split()
        if words[:1] == ['import'] or (words[:1] == ['from'] and 'import' in words):
            roots.add(words[1].split('.')[0])
    assert roots <= {'copy', 'math', 'os', 're', 'random', 'time', 'numpy', 'torch', 'torchvision', 'PIL'}, roots


def test_solution_compiles_under_python310_grammar():
    # ast with feature_version rejects syntax newer than 3.10 (match is fine, PEP 695 generics are not)
    import ast
    src = open(os.path.join(ROOT, 'solution.py')).read()
    ast.parse(src, feature_version=(3, 10))


def _events(fn):
    """Audit events ('open' paths, socket calls) raised while fn runs."""
    seen = []
    active = [True]

    def hook(event, args):
        if active[0] and (event == 'open' or event.startswith('socket.')):
            seen.append((event, args[0] if args else None))
    sys.addaudithook(hook)  # hooks cannot be removed: switch this one off afterwards
    try:
        fn()
    finally:
        active[0] = False
    return seen


def test_reads_only_the_image_folder_and_writes_nothing(toy_model, image_folder, fast):
    solution.detect(toy_model, 10, image_folder, CIFAR_LIKE)  # warm imports first
    seen = _events(lambda: solution.detect(toy_model, 10, image_folder, CIFAR_LIKE))
    root = os.path.realpath(image_folder)
    opened = [a for e, a in seen if e == 'open']
    assert opened, 'expected the images to be opened'
    for path in opened:
        p = os.path.realpath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else None
        assert p is not None and os.path.commonpath([root, p]) == root, f'opened outside the folder: {path}'
    assert not [e for e, _ in seen if e.startswith('socket.')], 'no network'


def test_leaves_model_transform_and_rng_untouched(image_folder, fast):
    torch.manual_seed(1)
    model = PreActResNet18(num_classes=10, width=8)
    model.train()  # the caller's mode must survive
    model.layer4.requires_grad_(False)
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # move BN running stats away from their init
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    transform = copy.deepcopy(CIFAR_LIKE)
    transform_repr = repr(transform)
    random.seed(5); np.random.seed(5); torch.manual_seed(5)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())

    solution.detect(model, 10, image_folder, transform)

    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), 'parameters or BN statistics changed'
    assert repr(transform) == transform_repr
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.random.get_rng_state(), rng[2])


def test_same_inputs_same_answer(toy_model, image_folder, fast):
    a = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    b = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert a['per_class'] == b['per_class'] and a['p_value'] == b['p_value'] and a['verdict'] == b['verdict']


def test_mnist_style_grayscale_transform(tmp_path, fast):
    from conftest import write_images
    folder = write_images(tmp_path / 'imgs', n=12, size=28)
    mnist = T.Compose([T.Resize((28, 28)), T.Grayscale(num_output_channels=3), T.ToTensor(), T.Normalize([0.5], [0.5])])
    model = PreActResNet18(num_classes=10, width=8).eval()
    e = solution.evidence(model, 10, folder, mnist)
    assert len(e['per_class']) == 10 and 0.0 <= e['p_value'] <= 1.0


def test_a_chunk_that_overruns_cannot_starve_the_later_ones(toy_model, image_folder, fast, monkeypatch):
    """Classes are optimised in chunks. If the machine slows down after the plan is made, one chunk may
    run to its deadline; every later chunk must still be handed time of its own, and none a deadline
    past the call's budget."""
    clock = [1000.0]
    monkeypatch.setattr(solution.time, 'monotonic', lambda: clock[0])
    monkeypatch.setitem(solution.HYP, 'budget_s', 40.0)
    monkeypatch.setitem(solution.HYP, 'chunk_elems', 1)  # one class per chunk
    monkeypatch.setitem(solution.HYP, 'contrast', False)  # one pass (the next test has two)
    seen = []
    real = solution._class_statistics

    def overrunning(split, h0, labels, classes, steps, deadline, bounds=None, area=None, refine=None, core=None, exclude=False):
        seen.append((clock[0], deadline))
        out = real(split, h0, labels, classes, 1, float('inf'), bounds, area, refine, core, exclude)
        clock[0] = deadline + 0.01  # ran slightly past its deadline, as the guard allows
        return out

    monkeypatch.setattr(solution, '_class_statistics', overrunning)
    solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert len(seen) == 10
    assert all(deadline > now + 1.0 for now, deadline in seen)  # each chunk gets seconds of its own
    assert seen[-1][1] <= 1000.0 + 40.0


def test_chunks_capped_for_a_cpu_cache_give_the_statistics_of_one_batch(toy_model, image_folder, fast, monkeypatch):
    """On a CPU the classes are optimised at most HYP['cpu_chunk_elems'] elements at a time (a batch past
    the cache costs more per image than the timing probe measured, so one large chunk overran its plan).
    Each class's search, refinement and scoring are its own: the chunks change the time, not the
    statistics. A GPU keeps the one large batch."""
    monkeypatch.setattr(solution, '_device_for', lambda model: torch.device('cpu'))
    seen = []
    real = solution._class_statistics

    def spy(split, h0, labels, classes, *args, **kw):
        seen.append((len(classes), h0.numel()))
        return real(split, h0, labels, classes, *args, **kw)

    monkeypatch.setattr(solution, '_class_statistics', spy)
    monkeypatch.setitem(solution.HYP, 'cpu_chunk_elems', 2 ** 40)
    whole = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert [k for k, _ in seen] == [10, 10]  # both passes, all classes at once
    per_class = seen[0][1]  # one class's free variable: its images' activations
    seen.clear()
    monkeypatch.setitem(solution.HYP, 'cpu_chunk_elems', 3 * per_class + 1)
    capped = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert [k for k, _ in seen] == [3, 3, 3, 1] * 2
    for key in ('per_class', 'per_class_dense', 'landing', 'core'):
        assert np.allclose(capped[key], whole[key], rtol=1e-4, atol=1e-6), key
    assert capped['p_value'] == pytest.approx(whole['p_value'], rel=1e-3)
    assert solution._chunk(10, per_class, torch.device('cuda')) == 10  # no cache cap off the CPU


def test_the_reported_null_scale_is_the_one_the_p_value_used(toy_model, image_folder, tiny, monkeypatch):
    """With HYP['scale_floor'] the null's scale is floored before the p-value; evidence() reports that scale."""
    monkeypatch.setitem(solution.HYP, 'scale_floor', 50.0)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert e['null_scale'] == 50.0 and e['p_value'] > 0.9
    monkeypatch.setitem(solution.HYP, 'scale_floor', -1.0)
    with pytest.raises(ValueError, match='scale_floor'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_the_contrast_gate_takes_a_share_of_the_mean_own_margin(toy_model, image_folder, tiny, monkeypatch):
    """HYP['contrast_own'] is a number >= 0; with it on, evidence() reports every class's own margin."""
    monkeypatch.setitem(solution.HYP, 'own_floor', False)
    monkeypatch.setitem(solution.HYP, 'contrast_own', 0.15)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert len(e['own_margin']) == 10 and all(o > 0 for o in e['own_margin'])  # computed for the gate alone
    monkeypatch.setitem(solution.HYP, 'contrast_own', -0.1)
    with pytest.raises(ValueError, match='contrast_own'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_the_contrast_runs_a_patch_pass_then_a_dense_pass_inside_one_budget(release_alone, toy_model, image_folder, fast, monkeypatch):
    """With the contrast on, every class is optimised twice: first with the area limit and the value
    bounds, then densely with neither. Each pass gets its share of the one budget, and the verdict
    comes from the smaller of the two p-values, Sidak-corrected."""
    clock = [1000.0]
    monkeypatch.setattr(solution.time, 'monotonic', lambda: clock[0])
    monkeypatch.setitem(solution.HYP, 'budget_s', 40.0)
    monkeypatch.setitem(solution.HYP, 'chunk_elems', 1)  # one class per chunk
    monkeypatch.setitem(solution.HYP, 'contrast', True)
    seen = []
    real = solution._class_statistics

    def overrunning(split, h0, labels, classes, steps, deadline, bounds=None, area=None, refine=None, core=None, exclude=False):
        seen.append((deadline, area, bounds is None))
        out = real(split, h0, labels, classes, 1, float('inf'), bounds, area, refine, core, exclude)
        clock[0] = deadline + 0.01  # every chunk runs to its deadline
        return out

    monkeypatch.setattr(solution, '_class_statistics', overrunning)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert [(area, free) for _, area, free in seen] == [(solution.HYP['area'], False)] * 10 + [(0.0, True)] * 10
    assert seen[9][0] <= 1000.0 + 20.0 + 0.1 < seen[10][0]  # the patch pass stops at about half the budget
    assert seen[-1][0] <= 1000.0 + 40.0
    assert len(e['per_class_dense']) == len(e['per_class_contrast']) == 10
    p_contrast = solution.max_p_value(e['per_class_contrast'])
    assert e['p_value'] == pytest.approx(1 - (1 - min(e['p_patch'], p_contrast)) ** 2)
    judged = e['per_class_contrast'] if p_contrast < e['p_patch'] else e['per_class']  # the test that decided
    assert e['judged'] == ('contrast' if p_contrast < e['p_patch'] else 'patch')
    assert e['statistic'] == max(judged) and e['target'] == judged.index(max(judged))


def test_the_spike_test_reads_the_patch_pass_landing_points_and_joins_the_correction(release_alone, toy_model, image_folder, fast, monkeypatch):
    """HYP['spike'] on: spike() of the patch pass's landing points against the folder's clean
    features is a third test, and the p-value is Sidak's over the three; off, it is absent."""
    monkeypatch.setitem(solution.HYP, 'contrast', True)
    monkeypatch.setitem(solution.HYP, 'contrast_plan', 1)  # both passes run whatever the plan
    landings, cleans = [], []
    real_land, real_feats = solution._landing_factors, solution._clean_features
    monkeypatch.setattr(solution, '_landing_factors', lambda landed, *a: landings.append(torch.cat(landed)) or real_land(landed, *a))
    monkeypatch.setattr(solution, '_clean_features', lambda *a: cleans.append(real_feats(*a)) or cleans[-1])
    monkeypatch.setitem(solution.HYP, 'spike', True)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert len(landings) == 2 and len(cleans) == 1  # the patch pass, the dense pass; clean features once
    assert e['per_class_spike'] == pytest.approx(solution.spike(landings[0], cleans[0][0]))
    ps = {'patch': e['p_patch'], 'contrast': solution.max_p_value(e['per_class_contrast']),
          'spike': solution.max_p_value(e['per_class_spike'])}
    assert e['p_value'] == pytest.approx(1 - (1 - min(ps.values())) ** 3)
    assert e['judged'] == min(ps, key=ps.get)
    monkeypatch.setitem(solution.HYP, 'spike', False)
    off = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert off['per_class_spike'] is None and off['per_class'] == e['per_class']
    assert off['p_value'] == pytest.approx(1 - (1 - min(ps['patch'], ps['contrast'])) ** 2)


def test_when_two_passes_would_starve_the_patch_pass_runs_alone_with_the_whole_budget(release_alone, toy_model, image_folder, fast, monkeypatch):
    """A plan of fewer than HYP['contrast_plan'] images x steps per class for each of two passes (a
    full-width 100-class model on a small CPU) drops the dense pass: the patch pass is planned again
    with all the time, and the model is judged by its p-value alone."""
    monkeypatch.setattr(solution.time, 'monotonic', lambda: 1000.0)  # the budget never runs down
    monkeypatch.setitem(solution.HYP, 'budget_s', 40.0)
    monkeypatch.setitem(solution.HYP, 'contrast', True)
    monkeypatch.setitem(solution.HYP, 'contrast_plan', 12)
    asked, probes = [], []

    def plan(step_seconds, seconds, num_classes, n_images, score_seconds):
        asked.append(seconds)
        return 2, (4 if seconds < 20 else 8)  # half the time affords 2 x 4, all of it 2 x 8

    monkeypatch.setattr(solution, '_plan', plan)
    monkeypatch.setattr(solution, '_step_seconds', lambda *a: probes.append(a) or (0.01, 0.004))
    areas = []
    real = solution._class_statistics

    def recording(split, h0, labels, classes, steps, deadline, bounds=None, area=None, refine=None, core=None, exclude=False):
        areas.append(area)
        return real(split, h0, labels, classes, steps, deadline, bounds, area, refine, core, exclude)

    monkeypatch.setattr(solution, '_class_statistics', recording)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert asked == [pytest.approx(0.7 * 40 / 2), pytest.approx(0.7 * 40)]
    assert len(probes) == 1  # the speed is timed once, for both plans
    assert e['steps'] == 8 and e['per_class_dense'] is None and e['judged'] == 'patch'
    assert set(areas) == {solution.HYP['area']}  # no dense pass ran
    assert e['p_value'] == e['p_patch'] == solution.max_p_value(e['per_class'], leave_out=e['absent'])

    monkeypatch.setitem(solution.HYP, 'contrast_plan', 8)  # 2 x 4 each is enough: both passes run
    asked.clear()
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert asked == [pytest.approx(0.7 * 40 / 2)] and e['steps'] == 4
    assert len(e['per_class_dense']) == 10


@pytest.mark.parametrize('first, plans', [(8, [(8, 10), (12, 2), (4, 2), (4, 2), (6, 15)]),
                                          (0, [(4, 25), (2, 15), (2, 6), (4, 2), (4, 25)])])
def test_the_plan_shortens_the_steps_before_it_drops_below_plan_images(monkeypatch, first, plans):
    """1 s a step, no scoring, 10 classes. With HYP['plan_images'] 8 the ladder tries every step count
    with 8 or more images before any rung with fewer, then every step count with 4 before any with 2:
    100 s a class gives 8 x 10, not 4 x 25; 30 s gives 12 x 2, not 2 x 15; at 12 s no rung of 8 fits
    and 4 x 2 does, not 2 x 6; a folder of 6 images counts 6 as enough (6 x 15). With 0, the old
    order: steps first, images down to 2."""
    monkeypatch.setitem(solution.HYP, 'plan_images', first)
    monkeypatch.setitem(solution.HYP, 'images', 30)
    monkeypatch.setitem(solution.HYP, 'steps', 25)
    monkeypatch.setitem(solution.HYP, 'min_steps', 2)
    budgets = ((100, 200), (30, 200), (12, 200), (10, 200), (100, 6))  # (seconds per class, images in the folder)
    got = [solution._plan(1.0, per_class * 10, 10, n_images) for per_class, n_images in budgets]
    assert got == plans
    assert all(n * steps <= per_class for (n, steps), (per_class, _) in zip(got, budgets))


def test_the_plan_pays_for_scoring_each_direction_after_the_steps():
    """The ladder counts, per image, its steps and the forward passes that score its class's direction
    afterwards: a plan that fits on steps alone is refused when the scoring would push it past the time."""
    step, k = 0.01, 10
    seconds = 30 * 25 * step * k  # the top rung, 30 images x 25 steps, fits exactly on steps alone
    assert solution._plan(step, seconds, k, 200) == (30, 25)
    n, steps = solution._plan(step, seconds, k, 200, score_seconds=0.04)
    assert (n, steps) != (30, 25) and n * (steps * step + 0.04) * k <= seconds


@pytest.mark.parametrize('refine, core', [(0.0, 0.5), (1.0, 0.5), (0.0, 0.0)])
def test_the_planned_scoring_is_the_scoring_the_passes_run(toy_model, image_folder, fast, monkeypatch, refine, core):
    """_scorings(area), which the plan charges per image and class, is the number of forward passes each
    image makes per class after a pass's steps, patch pass (core factor on and no refinement: the cut
    direction too) and dense pass alike."""
    monkeypatch.setitem(solution.HYP, 'refine', refine)
    monkeypatch.setitem(solution.HYP, 'core', core)
    monkeypatch.setitem(solution.HYP, 'contrast', True)
    monkeypatch.setitem(solution.HYP, 'contrast_plan', 1)
    rows, inside = [], [False]
    real_transfer, real_pooled = solution._transfer, solution._Split.pooled

    def transfer(split, h0, delta, target, area=0.0, *rest):
        inside[0] = True
        rows.append([area, len(delta), 0])
        try:
            return real_transfer(split, h0, delta, target, area, *rest)
        finally:
            inside[0] = False

    def pooled(self, h):
        if inside[0] and not torch.is_grad_enabled():  # scoring, not the refinement's ascent (charged apart)
            rows[-1][2] += len(h)
        return real_pooled(self, h)
    monkeypatch.setattr(solution, '_transfer', transfer)
    monkeypatch.setattr(solution._Split, 'pooled', pooled)
    solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert {area for area, _, _ in rows} == {solution.HYP['area'], 0.0}  # both passes scored
    for area, images_x_classes, forwards in rows:
        assert forwards == images_x_classes * solution._scorings(area, refine)
    cuts = 1 if refine or not core else 2  # the cut direction, patch pass only, with the core factor and no refinement
    assert solution._scorings(solution.HYP['area'], refine) == cuts * solution._scorings(0.0, refine)


def test_the_plan_charges_the_refinement_steps_and_refine_is_checked(release_alone, toy_model, image_folder, fast, monkeypatch):
    """With HYP['refine'] = r, every search step brings r refinement steps per norm with it, so the plan
    sees a step cost (1 + r * norms) times the probe's; a negative or non-number share is refused."""
    seen = []

    def plan(step_seconds, seconds, num_classes, n_images, score_seconds):
        seen.append(step_seconds)
        return 2, 2
    monkeypatch.setattr(solution, '_plan', plan)
    monkeypatch.setattr(solution, '_step_seconds', lambda *a: (0.01, 0.004))
    monkeypatch.setitem(solution.HYP, 'refine', 1.0)
    solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert seen[0] == pytest.approx(0.01 * (1 + 1.0 * len(solution.HYP['alphas'])))
    for bad in (-1, True, 'x', float('nan')):
        monkeypatch.setitem(solution.HYP, 'refine', bad)
        with pytest.raises(ValueError, match='refine'):
            solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


@pytest.mark.parametrize('probe, setting', [((1.0, 0.1), 'refined'), ((5.0, 0.1), 'cut'), ((5.0, 3.0), 'plain'),
                                            ((30.0, 3.0), 'plain')])
def test_where_the_last_rung_overshoots_every_class_runs_the_next_cheaper_setting(
        release_alone, toy_model, image_folder, fast, monkeypatch, probe, setting):
    """With 10 classes, 2 x 2 per class and 420 s planned (0.7 of the 600 s budget), (step, forward)
    seconds per image: (1, 0.1) affords the last rung refined (2 x (2 x 3 + 2 x 0.1) x 10 = 124 s);
    (5, 0.1) does not (604 s) but affords it unrefined with the core factor's cut scored (2 x (2 x 5 +
    4 x 0.1) x 10 = 208 s); (5, 3) affords neither (720, 440 s) but affords it without the cut (320 s);
    (30, 3) affords nothing and runs the cheapest. Each class runs that setting, and the plan is
    charged its costs."""
    steps_seen, plans, cuts = [], [], []
    real_refine, real_transfer = solution._refine, solution._transfer

    def refine(split, h0, u, target, area, steps, keep=None):
        steps_seen.append(steps)
        return real_refine(split, h0, u, target, area, steps, keep)

    def transfer(*args):
        out = real_transfer(*args)
        cuts.append(out[2] is not None)
        return out

    def plan(step_seconds, seconds, num_classes, n_images, score_seconds=0.0):
        plans.append((step_seconds, score_seconds))
        return 2, 2
    monkeypatch.setattr(solution, '_refine', refine)
    monkeypatch.setattr(solution, '_transfer', transfer)
    monkeypatch.setattr(solution, '_plan', plan)
    monkeypatch.setattr(solution, '_step_seconds', lambda *a: probe)
    monkeypatch.setitem(solution.HYP, 'refine', 1.0)
    monkeypatch.setitem(solution.HYP, 'core', 0.5)
    monkeypatch.setitem(solution.HYP, 'min_steps', 2)  # the last rung, 2 x 2
    monkeypatch.setitem(solution.HYP, 'contrast', False)
    ev = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    refined, cut = setting == 'refined', setting == 'cut'
    assert (ev['refine'], ev['core_power']) == (1.0 if refined else 0.0, 0.0 if setting == 'plain' else 0.5)
    assert steps_seen and all((s > 0) == refined for s in steps_seen)
    alphas = len(solution.HYP['alphas'])
    assert plans[0] == pytest.approx((probe[0] * (1 + alphas if refined else 1), probe[1] * alphas * (2 if cut else 1)))
    assert cuts and all(c == cut for c in cuts)  # the core factor on: its cut is scored in the 'cut' setting only
    assert cut or all(f == 1.0 for f in ev['core'])
