"""The evaluator: rows, error rows for bad samples, the summary and its last line."""
import json
import math
import re

import pytest
import torch

import solution
from bench import evaluate, samples
from model_arch import PreActResNet18
from test_samples import MNIST_LIKE


def test_auroc_counts_ties_half():
    assert evaluate.auroc([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert evaluate.auroc([1.0], [1.0]) == 0.5
    assert evaluate.auroc([0.0, 2.0], [1.0]) == 0.5


def test_the_accuracy_interval_covers_the_true_rate_about_95_percent_of_the_time():
    # exact coverage over every outcome k of n models right, each at true rate p: a wrong z, a centre
    # or width off, would move it well away from 0.95 (Wilson's coverage stays within about 0.92-0.98 here)
    for n in (16, 22, 61):
        for p in (0.5, 0.7, 0.85):
            cover = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k)
                        for k in range(n + 1) if evaluate.wilson(k, n)[0] <= p <= evaluate.wilson(k, n)[1])
            assert 0.92 < cover < 0.98, (n, p, cover)
    assert evaluate.wilson(0, 10)[0] == 0.0 and evaluate.wilson(10, 10)[1] == 1.0
    lo, hi = evaluate.wilson(49, 61)
    assert lo < 49 / 61 < hi and hi - lo < evaluate.wilson(8, 10)[1] - evaluate.wilson(8, 10)[0]
    assert all(math.isnan(v) for v in evaluate.wilson(0, 0))


def test_evaluator_runs_reports_errors_and_ends_with_the_summary_line(tmp_path, capsys, fast):
    for name, truth in (('m-clean', 1), ('m-bd', 0)):
        torch.manual_seed(len(name))
        model = PreActResNet18(10, 4)
        imgs = torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8)
        samples.write(str(tmp_path / name), model.state_dict(), 10, MNIST_LIKE, imgs, [i % 10 for i in range(12)], truth)
    (tmp_path / 'm-broken').mkdir()
    (tmp_path / 'm-broken' / 'metadata.pt').write_bytes(b'not a torch file')
    out = tmp_path / 'res.json'
    before = dict(solution.HYP)
    summary = evaluate.main([str(tmp_path), '--json', str(out), '--set', 'steps=12', '--set', 'images=5'])
    assert solution.HYP == before  # the --set settings held for that run only
    printed = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r'accuracy [\d.]+ auroc [\d.na]+ fpr [\d.]+ fnr [\d.]+ mean_s [\d.]+ max_s [\d.]+ n 2',
                        printed[-1]), printed[-1]
    assert any('m-broken' in line and 'ERROR' in line for line in printed)
    assert summary['errors'] == 1 and summary['n'] == 2
    saved = json.loads(out.read_text())
    assert {r['name'] for r in saved['rows']} == {'m-clean', 'm-bd', 'm-broken'}
    assert (tmp_path / 'res.png').exists()
    # each row names the plan its call ran (images x steps per class), and the summary counts them
    ran = [r for r in saved['rows'] if r['error'] is None]
    assert all(re.fullmatch(r'\d+x\d+', r['plan']) for r in ran)
    assert all(any(line.startswith(r['name'] + ' ') and f' {r["plan"]} ' in line for line in printed) for r in ran)
    plans = next(line for line in printed if line.strip().startswith('plans'))
    assert all(f'{plan}: {n}' in plans for plan, n in summary['plans'].items())
    assert sum(summary['plans'].values()) == 2 and set(summary['plans']) == {r['plan'] for r in ran}


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(SystemExit, match='unknown setting'):
        evaluate.override(evaluate.load_detector('solution'), ['stepz=3'])


def test_settings_are_restored_when_an_override_fails_midway(tmp_path):
    """--set steps=3 is applied before the unknown key stops the run: the caller still gets the settings
    it had (later runs in the same process, the tests among them, must not inherit a half-applied set)."""
    samples.write(str(tmp_path / 'm'), PreActResNet18(10, 4).state_dict(), 10, MNIST_LIKE,
                  torch.randint(0, 256, (10, 3, 28, 28), dtype=torch.uint8), list(range(10)), 1)
    before = dict(solution.HYP)
    with pytest.raises(SystemExit, match='unknown setting'):
        evaluate.main([str(tmp_path), '--set', 'steps=3', '--set', 'stepz=3'])
    assert solution.HYP == before and before['steps'] != 3


def test_explain_pictures_exactly_the_models_called_wrongly(tmp_path, capsys, fast):
    torch.manual_seed(0)
    model = PreActResNet18(10, 4)
    imgs = torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8)
    for name, truth in (('same-a', 1), ('same-b', 0)):  # one model under both labels: one call is wrong
        samples.write(str(tmp_path / 'zoo' / name), model.state_dict(), 10, MNIST_LIKE, imgs,
                      [i % 10 for i in range(12)], truth)
    out = tmp_path / 'res.json'
    evaluate.main([str(tmp_path / 'zoo'), '--json', str(out), '--explain', str(tmp_path / 'why')])
    rows = json.loads(out.read_text())['rows']
    assert rows[0]['verdict'] == rows[1]['verdict']
    wrong = [r for r in rows if r['verdict'] != r['truth']]
    assert len(wrong) == 1 and all((r['explain'] is None) == (r['verdict'] == r['truth']) for r in rows)
    png = tmp_path / 'why' / f'{wrong[0]["name"]}.png'
    assert wrong[0]['explain'] == str(png) and png.read_bytes()[:4] == b'\x89PNG'
    assert str(png) in capsys.readouterr().out


def test_explain_cli_draws_a_baseline_without_a_null(tmp_path, monkeypatch):
    from bench import explain
    from bench.baselines import nc
    monkeypatch.setitem(nc.HYP, 'steps', 4)
    torch.manual_seed(1)
    imgs = torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8)
    samples.write(str(tmp_path / 's'), PreActResNet18(10, 4).state_dict(), 10, MNIST_LIKE, imgs,
                  [i % 10 for i in range(12)], 1)
    explain.main([str(tmp_path / 's'), '--detector', 'nc', '--out', str(tmp_path / 'x.png')])
    assert (tmp_path / 'x.png').read_bytes()[:4] == b'\x89PNG'


def test_explain_draws_the_statistics_of_the_test_that_decided():
    """The picture's bars and null are those of the test evidence() names as the decider (the fitted null
    in ev belongs to it): the spike test's values when the spike decided, not the patch test's."""
    from bench import explain
    ev = {'per_class': [1.0, 2.0], 'per_class_contrast': [3.0, 4.0], 'per_class_spike': [5.0, 6.0],
          'per_class_margin': [8.0, 9.0]}
    assert explain.judged_statistics(dict(ev, judged='spike')) == ('spike', [5.0, 6.0])
    assert explain.judged_statistics(dict(ev, judged='margin')) == ('largest margin', [8.0, 9.0])
    assert explain.judged_statistics(dict(ev, judged='contrast')) == ('contrast', [3.0, 4.0])
    assert explain.judged_statistics(dict(ev, judged='patch'))[1] == [1.0, 2.0]
    assert explain.judged_statistics({'per_class': [7.0]})[1] == [7.0]  # a baseline names no test


def _row(truth, verdict, split, p, asr=None, attack='badnets'):
    return {'name': f'm{p}', 'data': 'd', 'attack': attack if truth == 0 else 'clean', 'asr': asr, 'split': split,
            'truth': truth, 'verdict': verdict, 'p_value': p, 'statistic': None, 'target': 0, 'true_target': 0,
            'seconds': 1.0, 'peak_mib': 0.0, 'error': None}


def test_summary_reports_the_held_out_split_beside_the_tuned_one():
    rows = [_row(0, 0, 'tune', 0.01, 100), _row(1, 1, 'tune', 0.5), _row(1, 0, 'holdout', 0.02),
            _row(0, 1, 'holdout', 0.3, 95), _row(0, 0, 'holdout', 0.001, 10)]
    s = evaluate.summarise(rows)
    assert s['n'] == 4 and s['accuracy'] == 0.5 and s['weak']['n'] == 1
    tune, held = s['splits']['tune'], s['splits']['holdout']
    assert (tune['n'], tune['accuracy'], tune['auroc']) == (2, 1.0, 1.0)
    assert (held['n'], held['accuracy'], held['fpr'], held['fnr'], held['auroc']) == (2, 0.0, 1.0, 1.0, 0.0)
    assert held['weak'] == {'n': 1, 'flagged': 1.0} and held['splits'] == {}


def test_compare_puts_solution_first_and_uses_only_the_models_every_run_has(tmp_path, capsys):
    from bench import compare
    a = [_row(0, 0, 'tune', 0.01, 100), _row(1, 1, 'tune', 0.5), _row(1, 0, 'tune', 0.03)]
    b = [_row(0, 1, 'tune', 0.01, 100), _row(1, 1, 'tune', 0.5)]  # this run lacks the third model
    (tmp_path / 'nc.json').write_text(json.dumps({'detector': 'nc', 'settings': [], 'rows': b}))
    (tmp_path / 'sol.json').write_text(json.dumps({'detector': 'solution', 'settings': [], 'rows': a}))
    compare.main([str(tmp_path / 'nc.json'), str(tmp_path / 'sol.json')])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('| detector |') and 'badnets' in lines[0]
    assert lines[2].startswith('| solution | 1.00 (0.34-1.00) |') and lines[2].endswith('| 2 |')  # the FP model is dropped
    assert lines[3].startswith('| nc | 0.50 (0.09-0.91) |')


def test_compare_merges_the_files_of_one_detector(tmp_path, capsys):
    from bench import compare
    rows = [_row(0, 0, 'tune', 0.01, 100), _row(1, 1, 'tune', 0.5)]
    for i, r in enumerate(rows):
        (tmp_path / f'sol{i}.json').write_text(json.dumps({'detector': 'solution', 'settings': [], 'rows': [r]}))
    (tmp_path / 'seed.json').write_text(json.dumps({'detector': 'seed', 'settings': [], 'rows': rows}))
    compare.main([str(tmp_path / 'seed.json'), str(tmp_path / 'sol0.json'), str(tmp_path / 'sol1.json')])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and lines[2].startswith('| solution | 1.00 (0.34-1.00) |') and lines[2].endswith('| 2 |')
    assert lines[5] == 'solution against seed, 2 models: right by the first only 0, by the second only 0; exact sign test p = 1'


def test_compare_tests_a_lead_on_the_same_models_by_its_discordant_pairs(tmp_path, capsys):
    from bench import compare
    assert compare.sign_test(6, 0) == 2 / 64 and compare.sign_test(3, 3) == 1.0 and compare.sign_test(0, 0) == 1.0
    assert abs(compare.sign_test(8, 2) - 2 * 56 / 1024) < 1e-12  # P(X <= 2) for X ~ Bin(10, 1/2), twice
    sol = [_row(1, 1, 'tune', 0.5) for _ in range(6)] + [_row(0, 0, 'tune', 0.01, 100)]
    nc = [dict(r, verdict=0) for r in sol[:6]] + [dict(sol[6], verdict=1)]  # wrong on the six clean, right on none
    for rows in (sol, nc):
        for i, r in enumerate(rows):
            r['name'] = f'm{i}'
    (tmp_path / 'sol.json').write_text(json.dumps({'detector': 'solution', 'settings': [], 'rows': sol}))
    (tmp_path / 'nc.json').write_text(json.dumps({'detector': 'nc', 'settings': [], 'rows': nc}))
    compare.main([str(tmp_path / 'nc.json'), str(tmp_path / 'sol.json')])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == 'solution against nc, 7 models: right by the first only 7, by the second only 0; exact sign test p = 0.016'


def test_compare_counts_the_backdoors_flagged_at_their_true_target(tmp_path, capsys):
    from bench import compare
    rows = [_row(0, 0, 'tune', 0.01, 100), _row(0, 0, 'tune', 0.02, 100), _row(0, 1, 'tune', 0.3, 100),
            _row(1, 1, 'tune', 0.5)]
    rows[1] = dict(rows[1], target=3)  # flagged, but at another class than its target 0
    (tmp_path / 'sol.json').write_text(json.dumps({'detector': 'solution', 'settings': [], 'rows': rows}))
    compare.main([str(tmp_path / 'sol.json')])
    head, _, row = capsys.readouterr().out.strip().splitlines()
    cells = dict(zip(head.strip('|').split('|'), row.strip('|').split('|')))
    assert cells[' at target '] == ' 1/2 ' and cells[' badnets '] == ' 2/3 '


def test_compare_by_data_gives_one_row_per_data_set(tmp_path, capsys):
    from bench import compare
    rows = [_row(0, 0, 'tune', 0.01, 100), _row(1, 1, 'tune', 0.5), _row(1, 0, 'tune', 0.03)]
    rows[2] = dict(rows[2], data='e')  # the false positive is the only model of data set e
    (tmp_path / 'sol.json').write_text(json.dumps({'detector': 'solution', 'settings': [], 'rows': rows}))
    compare.main([str(tmp_path / 'sol.json'), '--by', 'data'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[2].startswith('| solution / d | 1.00 (0.34-1.00) |') and lines[2].endswith('| 2 |')
    assert lines[3].startswith('| solution / e | 0.00 (0.00-0.79) |') and lines[3].endswith('| 1 |')


def test_plan_text_names_the_draws_only_when_there_are_several():
    assert evaluate._plan({'images': 12, 'steps': 25, 'draws': 3}) == '3*12x25'
    assert evaluate._plan({'images': 30, 'steps': 25, 'draws': 1}) == '30x25'
    assert evaluate._plan({'images': 30, 'steps': 25}) == '30x25'  # a record from before the draws
    assert evaluate._plan({'verdict': 1}) is None  # a detector without a plan
