"""The zoo: presets are well formed, a smoke zoo is written in the contest format and is reproducible."""
import json
import os

import torch

from bench import attacks, samples, zoo


def test_presets_name_known_attacks_and_unique_models():
    for name, make in zoo.PRESETS.items():
        specs = make()
        names = [s['name'] for s in specs]
        assert len(names) == len(set(names)), name
        assert {s['attack'] for s in specs if s['attack']} <= set(attacks.NAMES)
    default = zoo.PRESETS['default']()
    assert {s['attack'] for s in default if s['attack']} == set(attacks.NAMES)  # every attack in make bench
    assert any(s['seed'] >= zoo.HOLDOUT_SEED for s in default)
    assert any(s['train_kw'].get('adv') for s in default)


def test_smoke_zoo_is_written_in_contest_format_and_reused(tmp_path):
    rows = zoo.build_zoo('smoke', str(tmp_path), log=lambda m: None)
    assert {r['attack'] for r in rows} == {'clean', 'badnets'}
    index = [json.loads(line) for line in open(tmp_path / 'zoo.jsonl')]
    for r in index:
        s = samples.read(str(tmp_path / r['name']))
        assert s.ground_truth == (1 if r['attack'] == 'clean' else 0)
        assert s.num_classes == 10
        files = os.listdir(s.images)
        assert len(files) >= 3 * 10 and all(f.endswith('.jpg') for f in files)
        assert {int(f.split('_')[1].split('.')[0]) for f in files} == set(range(10))
        for key in ('clean_acc', 'asr', 'target', 'rate', 'width', 'seed', 'split', 'seconds'):
            assert key in r
    bd = next(r for r in index if r['attack'] == 'badnets')
    assert bd['asr'] > 80 and 0 <= bd['target'] < 10

    before = os.path.getmtime(tmp_path / bd['name'] / 'model.pt')
    zoo.build_zoo('smoke', str(tmp_path), log=lambda m: None)  # complete models are reused
    assert os.path.getmtime(tmp_path / bd['name'] / 'model.pt') == before

    other = tmp_path / 'again'
    zoo.build_zoo('smoke', str(other), match='clean', log=lambda m: None)  # same seed, same weights
    name = next(r['name'] for r in index if r['attack'] == 'clean')
    a = samples.read(str(tmp_path / name)).state_dict
    b = samples.read(str(other / name)).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
