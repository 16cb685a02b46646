"""bench.record: recording evidence() image by image leaves it unchanged, and rescoring reproduces it."""
import copy
import math

import pytest
import torch

import solution
from bench import record
from bench.detectors import restoring
from conftest import CIFAR_LIKE, FAST, make_toy_model, write_images


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    """One record of the toy model (the toy_model and image_folder fixtures' model and images) at FAST,
    taken once for the tests that only read or rescore it."""
    model = make_toy_model()
    folder = write_images(tmp_path_factory.mktemp('record') / 'test_dataset')
    with restoring(solution) as hyp:
        hyp.update(FAST)
        return record.record(model, 10, folder, CIFAR_LIKE)


@pytest.fixture
def rec(recorded, fast):
    """A copy of the module's record, for a test that may change it."""
    return copy.deepcopy(recorded)


def test_recording_changes_nothing(rec, toy_model, image_folder, fast):
    plain = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert rec['evidence']['p_value'] == plain['p_value']
    assert rec['evidence']['per_class'] == plain['per_class']
    assert solution._transfer_margins.__name__ == '_transfer_margins'  # the hooks are gone again


def test_record_holds_every_class_pass_and_image(rec):
    ev = rec['evidence']
    assert len(rec['passes']) == ev['draws'] * (2 if ev['per_class_dense'] is not None else 1)
    for ps in rec['passes']:
        n = len(ps['labels'])
        assert n == ev['images']
        assert sorted(c for call in ps['calls'] for c in call['classes'].tolist()) == list(range(10))
        for call in ps['calls']:
            assert len(call['margins']) == len(solution.HYP['alphas'])
            assert all(m.shape == (len(call['classes']), n) and (m >= 0).all() for m in call['margins'])


def test_mean_reproduces_the_recorded_p_value(rec):
    p, target, finals = record.rescore(rec, 'mean')
    ev = rec['evidence']
    assert math.isclose(p, ev['p_value'], rel_tol=1e-5, abs_tol=1e-12)
    assert target == ev['target']
    assert finals[0] == pytest.approx(ev['per_class'], rel=1e-5)


def test_mean_reproduces_a_record_of_three_image_draws(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'draws', 3)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    ev = rec['evidence']
    assert ev['draws'] == 3 and len(rec['passes']) == 3 * (2 if ev['per_class_dense'] is not None else 1)
    assert len({tuple(ps['labels'].tolist()) for ps in rec['passes']}) > 1  # the draws took other images
    p, target, finals = record.rescore(rec, 'mean')
    assert math.isclose(p, ev['p_value'], rel_tol=1e-5, abs_tol=1e-12)  # the median draw's, as recorded
    assert target == ev['target'] and finals[0] == pytest.approx(ev['per_class'], rel=1e-5)


def test_mean_reproduces_a_record_taken_with_the_core_factor(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'refine', 0.0)  # refined, the direction is one patch: the factor would be 1
    monkeypatch.setitem(solution.HYP, 'core', 1.0)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    ev = rec['evidence']
    assert any(f < 1 for f in ev['core'])  # the factor is in play on this model
    assert all(c is not None for call in rec['passes'][0]['calls'] for c in call['cut'])  # the patch pass's cut margins
    monkeypatch.setitem(solution.HYP, 'core', 0.0)  # rescoring takes the setting from the record
    p, target, finals = record.rescore(rec, 'mean')
    assert math.isclose(p, ev['p_value'], rel_tol=1e-5, abs_tol=1e-12)
    assert finals[0] == pytest.approx(ev['per_class'], rel=1e-5)


def test_a_record_without_the_spike_rescores_with_it_as_a_spike_run_would_score(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'contrast_plan', 1)  # both passes: three tests with the spike
    plain = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    monkeypatch.setitem(solution.HYP, 'spike', True)
    ev = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    monkeypatch.setitem(solution.HYP, 'spike', False)
    p, target, _ = record.rescore(plain, 'mean', ['spike=True'])
    assert ev['per_class_spike'] is not None and plain['evidence']['per_class_spike'] is None
    assert math.isclose(p, ev['p_value'], rel_tol=1e-5, abs_tol=1e-12) and target == ev['target']
    assert record.rescore(plain, 'mean')[0] == pytest.approx(plain['evidence']['p_value'], rel=1e-5, abs=1e-12)


def test_a_core_record_rescores_at_another_exponent(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'refine', 0.0)  # refined, the direction is one patch: the factor would be 1
    monkeypatch.setitem(solution.HYP, 'core', 1.0)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    for q in (0.0, 0.5):
        monkeypatch.setitem(solution.HYP, 'core', q)
        ev = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
        p, target, finals = record.rescore(rec, 'mean', [f'core={q}'])
        assert math.isclose(p, ev['p_value'], rel_tol=1e-5, abs_tol=1e-12)
        assert finals[0] == pytest.approx(ev['per_class'], rel=1e-5)
    with pytest.raises(ValueError, match='new recording'):
        record.rescore(rec, 'mean', ['steps=5'])


def test_a_record_without_cut_margins_refuses_the_core_factor(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'refine', 0.0)  # unrefined, a cut would have been scored with core on
    monkeypatch.setitem(solution.HYP, 'core', 0.0)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    with pytest.raises(ValueError, match='cut margins'):
        record.rescore(rec, 'mean', ['core=0.5'])


def test_a_call_that_ran_without_the_cut_rescores_as_it_ran(toy_model, image_folder, fast, monkeypatch):
    """Where even the unrefined last rung overshoots with the core factor's cut, the call runs without
    it (solution._settings, 'core_power' 0) although HYP['core'] is on: its record holds no cut margins,
    and rescoring it at its own settings reproduces the call instead of refusing it."""
    monkeypatch.setitem(solution.HYP, 'refine', 1.0)
    monkeypatch.setitem(solution.HYP, 'core', 0.5)
    monkeypatch.setitem(solution.HYP, 'min_steps', 2)
    monkeypatch.setattr(solution, '_step_seconds', lambda *a: (5.0, 3.0))  # only the cheapest setting fits (test_contract)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    assert (rec['evidence']['refine'], rec['evidence']['core_power']) == (0.0, 0.0)
    assert all(c is None for call in rec['passes'][0]['calls'] for c in call['cut'])
    p, target, finals = record.rescore(rec)
    assert math.isclose(p, rec['evidence']['p_value'], rel_tol=1e-5, abs_tol=1e-12)
    assert finals[0] == pytest.approx(rec['evidence']['per_class'], rel=1e-5)
    with pytest.raises(ValueError, match='cut margins'):
        record.rescore(rec, 'mean', ['core=0.5'])


def test_a_refined_record_rescores_with_the_core_factor_on_as_one(toy_model, image_folder, fast, monkeypatch):
    """Refined, no cut is scored (solution._cuts): the record holds none, and rescoring it with the core
    factor on reproduces the call, whose factors are all 1."""
    monkeypatch.setitem(solution.HYP, 'refine', 1.0)
    monkeypatch.setitem(solution.HYP, 'core', 0.5)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    assert all(c is None for call in rec['passes'][0]['calls'] for c in call['cut'])
    p, target, finals = record.rescore(rec, 'mean', ['core=1.0'])
    assert math.isclose(p, rec['evidence']['p_value'], rel_tol=1e-5, abs_tol=1e-12)
    assert finals[0] == pytest.approx(rec['evidence']['per_class'], rel=1e-5)


def test_other_reductions_leave_out_the_class_images(rec):
    """Make class 0's own images' margins huge: the mean moves, the mean and median over the others do not."""
    base = {r: record.rescore(rec, r)[2][0][0] for r in record.REDUCE}
    for ps in rec['passes']:
        own = ps['labels'] == 0
        for call in ps['calls']:
            j = call['classes'].tolist().index(0) if 0 in call['classes'].tolist() else None
            if j is not None:
                for m in call['margins'] + [c for c in call.get('cut', []) if c is not None]:  # uncut and cut alike
                    m[j, own] += 1000.0
    after = {r: record.rescore(rec, r)[2][0][0] for r in record.REDUCE}
    assert after['mean'] > base['mean'] + 1
    assert after['mean_other'] == pytest.approx(base['mean_other'])
    assert after['median_other'] == pytest.approx(base['median_other'])


@pytest.mark.parametrize('exclude_own, aggregate, reduce', [(True, 'mean', 'mean_other'), (False, 'median', 'median'),
                                                          (True, 'median', 'median_other')])
def test_a_record_of_the_other_aggregates_reproduces_under_its_reduction(exclude_own, aggregate, reduce, toy_model,
                                                                          image_folder, tiny, monkeypatch):
    """Taken with the class's own images left out (HYP['exclude_own']) or the median over images
    (HYP['aggregate']), a record rescores to its own p-value under the matching reduction."""
    monkeypatch.setitem(solution.HYP, 'exclude_own', exclude_own)
    monkeypatch.setitem(solution.HYP, 'aggregate', aggregate)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    p, _, finals = record.rescore(rec, reduce)
    assert math.isclose(p, rec['evidence']['p_value'], rel_tol=1e-5, abs_tol=1e-12)
    assert finals[0] == pytest.approx(rec['evidence']['per_class'], rel=1e-5)
    assert finals[0] != pytest.approx(record.rescore(rec, 'mean')[2][0], rel=1e-6)  # the release's reduction differs


@pytest.mark.parametrize('images', [4, 5])
def test_sparse_settings_act_only_in_a_draw_of_fewer_images_than_half_the_classes(images, toy_model, image_folder, tiny,
                                                                          monkeypatch):
    """exclude_own and own_floor 'sparse': on in a draw of 4 images of 10 classes, off in one of 5, and
    a record of either rescores to its own p-value (its floor resolved from the record's draw)."""
    monkeypatch.setitem(solution.HYP, 'images', images)
    recs = {}
    for v in ('sparse', True, False):
        monkeypatch.setitem(solution.HYP, 'exclude_own', v)
        monkeypatch.setitem(solution.HYP, 'own_floor', v)
        recs[v] = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    on = 2 * images < 10
    got, same, other = (recs[v]['evidence']['per_class'] for v in ('sparse', on, not on))
    assert got == pytest.approx(same, rel=1e-6)
    assert got != pytest.approx(other, rel=1e-3)  # the setting matters on this model and draw
    p, _, _ = record.rescore(recs['sparse'], 'mean_other' if on else 'mean')
    assert math.isclose(p, recs['sparse']['evidence']['p_value'], rel_tol=1e-5, abs_tol=1e-12)
    assert record.recorded(recs['sparse']) == ('mean_other' if on else 'mean')
    assert record.rescore(recs['sparse'])[0] == p  # the default reduction is the call's own


def test_a_record_from_before_the_sparse_settings_rescores_as_it_ran(toy_model, image_folder, tiny, monkeypatch):
    """A record whose settings lack exclude_own and own_floor was taken before they existed: off, even in
    a draw of 4 images of 10 classes where the defaults ('sparse') would act."""
    monkeypatch.setitem(solution.HYP, 'exclude_own', False)
    monkeypatch.setitem(solution.HYP, 'own_floor', False)
    rec = record.record(toy_model, 10, image_folder, CIFAR_LIKE)
    del rec['hyp']['exclude_own'], rec['hyp']['own_floor']
    monkeypatch.setitem(solution.HYP, 'exclude_own', 'sparse')
    monkeypatch.setitem(solution.HYP, 'own_floor', 'sparse')
    assert record.recorded(rec) == 'mean'
    assert math.isclose(record.rescore(rec)[0], rec['evidence']['p_value'], rel_tol=1e-5, abs_tol=1e-12)


def test_the_scale_floor_rescores_and_a_record_from_before_it_rescores_without_it(rec, monkeypatch):
    """scale_floor acts after the margins, so a record rescores under it; a floor far above the statistics'
    spread calls the largest class ordinary. A record taken before the setting existed ran without it."""
    p = rec['evidence']['p_value']
    floored = record.rescore(rec, sets=('scale_floor=100.0',))[0]
    assert floored > 0.99 > p + 0.05  # the toy's p (0.91) is low enough for the floor to show
    del rec['hyp']['scale_floor']
    monkeypatch.setitem(solution.HYP, 'scale_floor', 100.0)
    assert math.isclose(record.rescore(rec)[0], p, rel_tol=1e-5, abs_tol=1e-12)


@pytest.mark.parametrize('images, key', [(8, 'confirm_trim'), (4, 'confirm_trim_largest')])
def test_the_margin_null_trim_rescores_and_a_record_from_before_it_rescores_without_it(rec, monkeypatch, images, key):
    """The margin null's trims act on the margin test's recorded statistics, so a record rescores under
    them: confirm_trim where its recorded plan read a quantile (8 images), confirm_trim_largest where it
    read the largest margin (4 images, under confirm_quantile_min 8)."""
    margins = [-6.0, -5.0, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 3.0]
    rec['evidence'].update(per_class_margin=margins, confirm_plan=(images, 100))
    rec['hyp'].update(confirm_trim=0, confirm_trim_largest=0, confirm_quantile_min=8)  # as if recorded without them
    plain, target, finals = record.rescore(rec)
    trimmed = record.rescore(rec, sets=(f'{key}=2',))[0]
    other = 'confirm_trim_largest' if key == 'confirm_trim' else 'confirm_trim'
    assert record.rescore(rec, sets=(f'{other}=2',))[0] == pytest.approx(plain, rel=1e-9)  # the other regime's
    monkeypatch.setitem(solution.HYP, key, 0)  # combine() reads the setting in force
    expect = solution.combine(record.rescore(dict(rec, evidence=dict(rec['evidence'], per_class_margin=None)))[0],
                              margins, finals, per_early=rec['evidence']['per_class_early'])[0]
    assert plain == pytest.approx(expect, rel=1e-9)
    assert trimmed < 0.03 < solution.P_THRESHOLD < plain  # the two classes far below no longer hide class 9
    del rec['hyp'][key]
    monkeypatch.setitem(solution.HYP, key, 2)
    assert record.rescore(rec)[0] == pytest.approx(plain, rel=1e-9)


def test_the_two_margin_searches_rescore_pooled(rec):
    """early_pool acts on the two margin searches' recorded statistics: rescored with it, the record's p is
    combine()'s under it and its target the pooled statistics' top class."""
    margins = [0.1, 0.4, 0.2, 0.3, 2.5, 0.0, 0.5, 0.35, 0.15, 0.45]
    early = [0.3, 0.0, 0.5, 0.1, 1.9, 0.4, 0.2, 0.45, 0.35, 0.15]
    rec['evidence'].update(per_class_margin=margins, per_class_early=early, confirm_plan=(12, 100))
    rec['hyp'].update(early_pool=False)
    release = record.rescore(dict(rec, evidence=dict(rec['evidence'], per_class_margin=None)))[0]
    plain = record.rescore(rec)[0]
    pooled, target, finals = record.rescore(rec, sets=('early_pool=True',))
    with restoring(solution):
        solution.HYP['early_pool'] = True
        expect = solution.combine(release, margins, finals, (12, 100), early)
    assert expect[3] == 'pooled' and target == 4
    assert pooled == pytest.approx(expect[0], rel=1e-9) and pooled != pytest.approx(plain, rel=1e-6)


def test_the_contrast_gate_rescores_from_the_recorded_own_margins(rec):
    """contrast_own acts after the margins, on the record's own margins: a record rescores under it."""
    ev = rec['evidence']
    assert ev['per_class_contrast'] is not None  # FAST runs both passes
    ev['per_class_margin'] = None  # the release's tests alone
    k = rec['num_classes']
    plain = record.rescore(rec)[0]
    top = max(range(k), key=ev['per_class_contrast'].__getitem__)
    ev['own_margin'] = [1.0] * k
    ev['own_margin'][top] = 0.0
    assert record.rescore(rec, sets=('contrast_own=0.15',))[0] == pytest.approx(plain, rel=1e-9)  # counted
    ev['own_margin'][top] = 1.0
    gated = record.rescore(rec, sets=('contrast_own=0.15',))[0]
    assert gated == pytest.approx(1 - (1 - ev['p_patch']) ** 2, rel=1e-6)  # the patch test's, Sidak over two


def test_records_load_without_pickled_code(rec, tmp_path):
    path = tmp_path / 'm.pt'
    rec.update(seconds=1.0, truth=1, meta={'data': 'toy', 'attack': 'clean'})
    torch.save(rec, path)
    back = torch.load(path, weights_only=True)
    assert record.rescore(back)[0] == record.rescore(rec)[0]


def test_cli_records_and_rescores(smoke_zoo, tmp_path, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'budget_s', 600.0)
    out = tmp_path / 'records'
    record.main([smoke_zoo, '--out', str(out), '--set', 'steps=4', '--set', 'min_steps=4', '--set', 'images=4'])
    rows = record.main(['--rescore', str(out), '--json', str(tmp_path / 'r.json')])  # each record's own reduction
    assert len(rows) == 2 and {r['truth'] for r in rows} == {0, 1}
    recs = {r['name']: torch.load(out / f"{r['name']}.pt", weights_only=True) for r in rows}
    for r in rows:
        assert math.isclose(r['p_value'], recs[r['name']]['evidence']['p_value'], rel_tol=1e-5, abs_tol=1e-12)


def test_a_record_it_cannot_rescore_is_refused(rec):
    rec['hyp']['snapshots'] = (0.5, 1.0)  # two snapshots per class: the record holds both, mixed
    with pytest.raises(ValueError, match='snapshots'):
        record.rescore(rec)


def test_the_null_without_absent_classes_rescores(rec, toy_model, image_folder, monkeypatch):
    """null_absent acts on the release's recorded statistics and the draw's labels: evidence() under it
    fits the patch null without the classes that have no image in the draw (FAST: 6 images of 10 classes,
    own images counted), and a record taken either way rescores to either call's p-value."""
    recorded = solution.HYP['null_absent']
    monkeypatch.setitem(solution.HYP, 'null_absent', not recorded)
    other = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    off, on = (rec['evidence'], other) if not recorded else (other, rec['evidence'])
    assert off['absent'] == [] and len(on['absent']) == 4 and on['per_class'] == off['per_class']
    assert on['p_patch'] == solution.max_p_value(on['per_class'], leave_out=on['absent']) != off['p_patch']
    assert off['p_patch'] == solution.max_p_value(off['per_class'])
    for setting, e in ((False, off), (True, on)):
        assert record.rescore(rec, sets=(f'null_absent={setting}',))[0] == pytest.approx(e['p_value'], rel=1e-9)
