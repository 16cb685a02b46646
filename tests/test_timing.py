"""bench.timing on a tiny model: one row per model, with its plan and the passes the call ran."""
import pytest
import torch

import solution
from bench import timing


@pytest.mark.parametrize('contrast', [True, False])
def test_timing_prints_each_model_with_its_plan_and_passes(tmp_path, capsys, monkeypatch, contrast):
    monkeypatch.setitem(solution.HYP, 'budget_s', 4.0)  # a short call: the row's format is what is tested
    monkeypatch.setitem(solution.HYP, 'contrast', contrast)
    monkeypatch.setitem(solution.HYP, 'contrast_plan', 1)  # any plan affords the dense pass when it is on
    threads = torch.get_num_threads()
    try:
        timing.main(['--runs', '1', '--classes', '3', '--width', '4', '--threads', '1', '--cache', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # main() sets the process's threads
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith('cpu ')]
    assert [r[2] for r in rows] == ['clean', 'badnets'] and all(r[1] == '3' for r in rows)
    assert all(r[-2] == ('both' if contrast else 'patch') for r in rows)
    assert all(int(r[-4]) >= 1 and int(r[-3]) >= solution.HYP['min_steps'] for r in rows)  # images, steps
    assert all(r[-1] in ('refined', 'cut', 'plain') for r in rows)  # the setting (solution._settings)
