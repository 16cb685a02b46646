"""The zoo: presets are well formed, a smoke zoo is written in the contest format and is reproducible."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench import attacks, samples, zoo
from conftest import one_torch_thread


def test_presets_name_known_attacks_and_unique_models():
    for name, make in zoo.PRESETS.items():
        specs = make()
        names = [s['name'] for s in specs]
        assert len(names) == len(set(names)), name
        assert {s['attack'] for s in specs if s['attack']} <= set(attacks.NAMES)
    default = zoo.PRESETS['default']()
    assert {s['attack'] for s in default if s['attack']} == set(attacks.NAMES)  # every attack in make bench
    held = {s['attack'] for s in default if s['seed'] >= zoo.HOLDOUT_SEED}
    assert {'sig', 'trojannn', None} <= held  # the held-out part has the hardest families and clean models
    assert any(s['train_kw'].get('adv') for s in default)


def test_real_and_full_presets_hold_out_part_of_every_data_set():
    for preset in ('real', 'full'):
        specs = zoo.PRESETS[preset]()
        for data in zoo.REAL_CAPS:
            mine = [s for s in specs if s['data'] == data]
            held = [s for s in mine if s['seed'] >= zoo.HOLDOUT_SEED]
            assert {s['attack'] for s in held} == {None, 'badnets', 'blended', 'sig', 'lf', 'trojannn'}, (preset, data)
            assert {s['attack'] for s in mine if s['seed'] < zoo.HOLDOUT_SEED} >= set(attacks.NAMES), (preset, data)
    full = zoo.PRESETS['full']()
    assert {s['width'] for s in full} == {64}  # the contest's width
    assert {s['train_kw'].get('adv') for s in full} == {None, 'fgsm', 'pgd'}
    assert max(s['data_kw'].get('num_classes', 0) for s in full) == 200


def test_cpu_settings_raise_a_presets_epochs_and_never_lower_them():
    assert zoo.attack_spec('wanet', 0)['epochs'] == 30  # WaNet's floor over the default 12
    assert zoo.attack_spec('wanet', 0, epochs=60)['epochs'] == 60
    assert zoo.attack_spec('badnets', 0, epochs=8)['epochs'] == 8  # no floor of its own
    wanet = zoo.attack_spec('wanet', 0, data='cifar10')
    assert wanet['rate'] == 0.2 and wanet['params'] == {'s': 1.0} and wanet['name'].endswith('-e30-w16-s0')
    assert 'min_epochs' not in wanet['train_kw']  # the floor is the zoo's, not a training keyword
    floors = {a: c['min_epochs'] for a, c in zoo.CPU_SETTINGS.items() if 'min_epochs' in c}
    for make in zoo.PRESETS.values():  # the full preset (width 64) builds the attacks' own settings
        assert all(s['epochs'] >= floors.get(s['attack'], 0) for s in make() if s['width'] < 64)


def test_holdout_preset_is_eight_models_per_set_on_seeds_no_other_preset_uses():
    specs = zoo.PRESETS['holdout']()
    others = {(s['data'], s['seed']) for name, make in zoo.PRESETS.items() if name != 'holdout' for s in make()}
    assert len(specs) == 8 * len(zoo.HOLDOUT_SETS)
    for data, first, _ in zoo.HOLDOUT_SETS:
        mine = [s for s in specs if s['data'] == data and first <= s['seed'] < first + 4]
        assert len(mine) == 8 and {s['seed'] for s in mine} == set(range(first, first + 4)), data
        assert {s['attack'] for s in mine} == {None, 'badnets', 'blended', 'sig', 'trojannn'}, data
        assert sorted(str(s['train_kw']) for s in mine if s['attack'] is None) == sorted(
            ['{}', '{}', "{'adv': 'fgsm'}", "{'label_smoothing': 0.1}"]), data
        assert all(s['seed'] >= zoo.HOLDOUT_SEED and (data, s['seed']) not in others for s in mine), data
    assert {s['width'] for s in specs} == {16}


def test_gate_preset_builds_each_listed_model_once_on_seeds_no_other_preset_uses():
    specs = zoo.PRESETS['gate']()
    others = {(s['data'], s['seed']) for name, make in zoo.PRESETS.items() if name != 'gate' for s in make()}
    assert len({s['name'] for s in specs}) == len(specs) == len(zoo.GATE_MODELS)
    for s, (data, attack, seed, kw) in zip(specs, zoo.GATE_MODELS):
        assert (s['data'], s['attack'], s['seed']) == (data, attack, seed)
        assert s['seed'] >= zoo.HOLDOUT_SEED and (data, seed) not in others, s['name']
        if data in zoo.REAL_CAPS:  # real data: width 16 at the `real` preset's cap
            assert s['width'] == 16 and s['data_kw'] == {'n_train': zoo.REAL_CAPS[data]}
            kw = dict(kw, width=16, data_kw=s['data_kw'])
        else:  # the embedded data: the entry names its width and classes
            assert s['width'] == kw['width'] and s['data_kw'] == kw['data_kw'] and s['name'].startswith(f"synthetic{kw['data_kw']['num_classes']}-")
        assert s == (zoo.attack_spec(attack, seed, **kw, data=data) if attack else zoo.spec(None, seed, **kw, data=data))
    wanets = [s for s in specs if s['attack'] == 'wanet']
    assert wanets and all(s['epochs'] == 30 and s['rate'] == 0.2 for s in wanets)  # their CPU setting


def test_smoke_zoo_is_written_in_contest_format(smoke_zoo):
    index = [json.loads(line) for line in open(os.path.join(smoke_zoo, 'zoo.jsonl'))]
    assert {r['attack'] for r in index} == {'clean', 'badnets'}
    for r in index:
        s = samples.read(os.path.join(smoke_zoo, r['name']))
        assert s.ground_truth == (1 if r['attack'] == 'clean' else 0)
        assert s.num_classes == 10
        files = os.listdir(s.images)
        assert len(files) >= 3 * 10 and all(f.endswith('.jpg') for f in files)
        assert {int(f.split('_')[1].split('.')[0]) for f in files} == set(range(10))
        for key in ('clean_acc', 'asr', 'target', 'rate', 'width', 'seed', 'split', 'seconds', 'data_kw'):
            assert key in r
        clean = samples.load_inputs(s.path, 'clean', s.transformation)
        trig = samples.load_inputs(s.path, 'triggered', s.transformation)
        assert len(clean[0]) == zoo.DEFENCE_IMAGES
        if r['attack'] == 'clean':
            assert trig is None
        else:
            assert len(trig[0]) == int((clean[1] != r['target']).sum()) and (trig[1] != r['target']).all()
    bd = next(r for r in index if r['attack'] == 'badnets')
    assert bd['asr'] > 80 and 0 <= bd['target'] < 10


def test_built_models_are_reused_deterministic_and_get_missing_defence_inputs(smoke_zoo, tmp_path):
    shutil.copytree(smoke_zoo, tmp_path / 'zoo')
    index = [json.loads(line) for line in open(tmp_path / 'zoo' / 'zoo.jsonl')]
    bd = next(r for r in index if r['attack'] == 'badnets')
    folder = tmp_path / 'zoo' / bd['name']
    before = os.path.getmtime(folder / 'model.pt')
    trig_before = sorted(os.listdir(folder / 'defence_inputs' / 'triggered'))
    first = (folder / 'defence_inputs' / 'triggered' / trig_before[0]).read_bytes()
    shutil.rmtree(folder / 'defence_inputs')
    zoo.build_zoo('smoke', str(tmp_path / 'zoo'), log=lambda m: None)  # complete models are reused...
    assert os.path.getmtime(folder / 'model.pt') == before
    assert sorted(os.listdir(folder / 'defence_inputs' / 'triggered')) == trig_before  # ...inputs rebuilt
    assert (folder / 'defence_inputs' / 'triggered' / trig_before[0]).read_bytes() == first

    other = tmp_path / 'again'
    with one_torch_thread():  # same seed and threads, same weights
        zoo.build_zoo('smoke', str(other), match='clean', log=lambda m: None)
    name = next(r['name'] for r in index if r['attack'] == 'clean')
    a = samples.read(os.path.join(smoke_zoo, name)).state_dict
    b = samples.read(str(other / name)).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_whose_attack_recipe_changed_is_rebuilt_and_strays_are_named(smoke_zoo, tmp_path):
    shutil.copytree(smoke_zoo, tmp_path / 'zoo')
    index_path = tmp_path / 'zoo' / 'zoo.jsonl'
    index = [json.loads(line) for line in open(index_path)]
    bd = next(r for r in index if r['attack'] == 'badnets')
    clean = next(r for r in index if r['attack'] == 'clean')
    mtime = {r['name']: os.path.getmtime(tmp_path / 'zoo' / r['name'] / 'model.pt') for r in index}
    bd['params']['rate'] = 0.5  # as if built when the attack's rate was another
    stray = dict(clean, name='synthetic10-retired-w8-s0')
    with open(index_path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in index + [stray])
    lines = []
    zoo.build_zoo('smoke', str(tmp_path / 'zoo'), log=lines.append)
    assert os.path.getmtime(tmp_path / 'zoo' / bd['name'] / 'model.pt') != mtime[bd['name']]
    assert os.path.getmtime(tmp_path / 'zoo' / clean['name'] / 'model.pt') == mtime[clean['name']]
    notices = [line for line in lines if 'not in the smoke preset' in line]
    assert len(notices) == 1 and 'synthetic10-retired-w8-s0' in notices[0]
    lines.clear()
    zoo.build_zoo('smoke', str(tmp_path / 'zoo'), log=lines.append)  # now up to date: nothing rebuilt
    assert [line for line in lines if 'not in the smoke preset' not in line] == []


def test_targets_are_deterministic_and_differ_between_the_attacks_of_one_seed():
    specs = [s for s in zoo.PRESETS['default']() if s['attack'] and s['seed'] == 0 and s['name'].startswith('synthetic10')]
    targets = [zoo.target_of(s, 10) for s in specs]
    assert targets == [zoo.target_of(s, 10) for s in specs] and all(0 <= t < 10 for t in targets)
    assert len(set(targets)) >= 4, targets
    assert zoo.target_of(zoo.spec(None, 0), 10) is None


def test_list_prints_only_the_models_match_keeps(capsys):
    zoo.main(['--preset', 'real', '--match', 'tiny64-clean', '--list'])
    names = capsys.readouterr().out.split()
    assert names and all('tiny64-clean' in n for n in names)
    assert names == [s['name'] for s in zoo.PRESETS['real']() if 'tiny64-clean' in s['name']]


def test_worker_processes_build_the_same_models(smoke_zoo, tmp_path):
    # at the same torch threads per process (one: smoke_zoo's), a model trained in a worker is the one
    # trained in-process
    lines = []
    zoo.build_zoo('smoke', str(tmp_path), log=lines.append, jobs=2, threads=1)
    index = [json.loads(line) for line in open(tmp_path / 'zoo.jsonl')]
    assert sorted(r['name'] for r in index) == sorted(s['name'] for s in zoo.PRESETS['smoke']())
    assert sum(line.startswith(tuple(r['name'] + ':' for r in index)) for line in lines) == len(index)
    for r in index:
        a = samples.read(os.path.join(smoke_zoo, r['name'])).state_dict
        b = samples.read(str(tmp_path / r['name'])).state_dict
        assert all(torch.equal(a[k], b[k]) for k in a), r['name']


def test_worker_processes_skip_missing_data_with_one_notice(tmp_path):
    lines = []
    rows = zoo.build_zoo('real', str(tmp_path / 'zoo'), data_root=str(tmp_path / 'no-data'), match='mnist-clean-w16-s',
                         log=lines.append, jobs=2, threads=1)
    assert rows == [] and len(lines) == 1 and lines[0].startswith('skipping mnist')
    with pytest.raises(ValueError, match='jobs'):
        zoo.build_zoo('smoke', str(tmp_path / 'zoo'), jobs=0)


PARENT_OF_A_WORKER = """
import concurrent.futures as cf, multiprocessing as mp, os, signal, sys, time
from bench import zoo
if __name__ == '__main__':
    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=zoo._init_worker,
                                  initargs=(1, None))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)  # a long build, still running when this process is killed
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _running(pid):
    try:  # a zombie (exited, not yet reaped by whoever adopted it) has stopped running too
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='reads process states from /proc')
def test_a_build_worker_ends_when_its_parent_is_killed(tmp_path):
    script = tmp_path / 'parent.py'
    script.write_text(PARENT_OF_A_WORKER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    with open(tmp_path / 'out', 'w') as out:  # a file, not a pipe: a worker left alive would hold a pipe open
        code = subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, env=env,
                              timeout=120).returncode
    text = (tmp_path / 'out').read_text()
    assert code == -signal.SIGKILL, text
    worker = int(text.split()[0])
    deadline = time.monotonic() + 15
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(worker), 'the worker outlived its killed parent'


def test_exact_keeps_one_name_where_match_keeps_a_family(capsys):
    zoo.main(['--preset', 'real', '--match', 'cifar10-clean-w16-s1', '--list'])
    assert len(capsys.readouterr().out.split()) > 1  # s1, s100, s101, ...
    zoo.main(['--preset', 'real', '--match', 'cifar10-clean-w16-s1', '--exact', '--list'])
    assert capsys.readouterr().out.split() == ['cifar10-clean-w16-s1']
