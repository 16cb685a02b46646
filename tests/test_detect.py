"""Detection itself: a small model with a strong BadNets trigger is flagged at its target.

Its clean twin (the same recipe without the trigger) is not tested here: on the synthetic task the star,
ring and crescent classes can be reached from any image by one small patch (RESULTS.md), so whether one
toy clean model is called clean is one draw of a known trap, not a false-positive rate. At 30 x 25 the
release called it clean (p 0.25, 2026-12-05) and backdoored at 12 x 25 (p 5e-4): a test of it could only
be a non-strict xfail, one that cannot fail. False positives are measured by the bench, over many models."""
import pytest
import torch

import solution
from bench import attacks, data, samples, train
from bench.detectors import restoring
from bench.zoo import image_subset
from model_arch import PreActResNet18


TARGET = 3
THREADS = 2  # training and detection at a fixed thread count: the float reduction order, hence the models


@pytest.fixture(scope='module', autouse=True)
def fixed_threads():
    """Other tests (the CLIs' --threads) change torch's thread count; the model must not depend on it (at
    another thread count the same recipe trains another model: another draw)."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def backdoored(tmp_path_factory, fixed_threads):
    """A BadNets width-8 model trained on the embedded synthetic data, its sample folder written as the
    contest's, and its training figures."""
    ds = data.load('synthetic', seed=0, num_classes=10, n_train=120, n_test=20)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = PreActResNet18(10, width=8)
    atk = attacks.make('badnets', TARGET, ds.size, seed=0, rate=0.2, patch=5, pattern='random', loc='bottom_right')
    fig = train.train(model, ds, atk, epochs=8, lr=0.1, augment=False, seed=0, log=lambda m: None)
    folder = tmp_path_factory.mktemp('badnets')
    x, y = image_subset(ds, 0)
    samples.write(str(folder), model.state_dict(), 10, ds.transform(), x, y, 0)
    return model, str(folder / 'test_dataset'), ds.transform(), fig


def test_training_worked(backdoored):
    fig = backdoored[3]
    assert fig['clean_acc'] > 40 and fig['asr'] > 90


@pytest.fixture(scope='module')
def verdict(backdoored):
    """evidence() on the model, once, at the release's settings (the margin test included): its
    'p_release' is the release's own p-value, its 'p_value' Sidak over that and the margin test's. A
    budget no machine reaches, so the release always plans its full 30 images x 25 steps: the verdict
    must not depend on how loaded the machine is (a smaller plan is a different draw; 600 s was not
    enough on a 2-core machine running four jobs at once, where the release named class 2, alone 3)."""
    model, folder, transform, _ = backdoored
    with restoring(solution) as hyp:
        hyp.update(budget_s=36000.0)
        ev = solution.evidence(model, 10, folder, transform)
    assert (ev['images'], ev['steps']) == (30, 25), ev  # the full plan, or the verdict is another draw
    return ev


def test_backdoored_model_is_flagged_at_its_target(verdict):
    """The patch is random saturated colours, the usual BadNets stamp. A checker patch is a poor toy
    trigger here: the synthetic data draws classes 3 and 7 with a checker texture (data.class_attributes),
    so such a patch is natural evidence too. With it (2026-12-05, 30 x 25) the release ranked the star
    class 6 first on the patch test (45.6 against the target's 10.2) and flagged the model only through
    the contrast at class 7; with the random patch, the target is first (15.3 against 1.6, p 3e-11)."""
    assert verdict['p_release'] < solution.P_THRESHOLD and verdict['target'] == TARGET, verdict  # the release alone


def test_the_margin_test_is_an_alternative_to_the_release(verdict):
    """The seed's margin test, read at the end of its warm-up, and again after conv1 read after five steps
    (HYP['confirm'], HYP['early_read'] on by default): the verdict is Sidak over the three p-values, so a
    backdoor the release finds stays flagged."""
    p = 1 - (1 - min(verdict['p_release'], verdict['p_margin'], verdict['p_early'])) ** 3
    assert verdict['verdict'] == 0 and verdict['p_value'] == pytest.approx(p, rel=1e-9), verdict
    assert verdict['confirm_plan'] == (30, 100) and len(verdict['per_class_margin']) == len(verdict['per_class_early']) == 10
