"""The baseline detectors of bench/baselines: the evidence contract on a toy model, and their statistics."""
import importlib
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from model_arch import PreActResNet18

TRANSFORM = T.Compose([T.Resize((16, 16)), T.ToTensor(), T.Normalize((0.5, 0.45, 0.4), (0.25, 0.24, 0.26))])
K = 5

# Few steps and starts: these tests check the contract, not detection quality.
FAST = {
    'seed': {'steps': 4, 'images': 3, 'size': 24},
    'mmbd': {'steps': 4, 'starts': 3},
    'nc': {'steps': 4, 'images': 4},
    'l1mad': {'steps': 3, 'rounds': 3},
}
KEYS = {'verdict', 'p_value', 'statistic', 'target', 'per_class', 'seconds'}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        arr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f'{i}_{i % K}.jpg')
    return str(tmp_path)


@pytest.mark.parametrize('name', sorted(FAST))
def test_evidence_contract_and_no_side_effects(name, folder, monkeypatch):
    mod = importlib.import_module(f'bench.baselines.{name}')
    for key, value in FAST[name].items():
        monkeypatch.setitem(mod.HYP, key, value)
    torch.manual_seed(0)
    model = PreActResNet18(num_classes=K, width=4).train()  # train mode: a forward on it would move BN stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()

    ev = mod.evidence(model, K, folder, TRANSFORM)

    assert KEYS <= set(ev)
    assert ev['verdict'] in (0, 1) and mod.detect(model, K, folder, TRANSFORM) == ev['verdict']
    assert len(ev['per_class']) == K and all(isinstance(s, float) for s in ev['per_class'])
    assert 0 <= ev['target'] < K
    assert math.isfinite(ev['statistic']) or ev['statistic'] == math.inf
    assert ev['p_value'] is None or 0.0 <= ev['p_value'] <= 1.0
    assert ev['seconds'] > 0
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_every_baseline_exposes_hyp_and_the_evaluator_knows_it():
    from bench import evaluate
    for name in FAST:
        assert name in evaluate.DETECTORS
        assert isinstance(evaluate.load_detector(name).HYP, dict)


def test_seed_defaults_are_the_published_settings():
    from bench.baselines import seed
    assert (seed.HYP['images'], seed.HYP['size'], seed.HYP['steps']) == (30, 128, 100)
    assert (seed.HYP['lr'], seed.HYP['lr_final'], seed.HYP['warmup'], seed.HYP['p_threshold']) == (0.1, 0.001, 10, 0.08)
    lrs = [seed._lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and lrs[99] > 0.001


def test_seed_fresh_optimiser_makes_sign_steps():
    # One step of a fresh AdamW moves every coordinate by lr (times 1 - lr * decay), whatever the gradient's size.
    h = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = torch.optim.AdamW([h], lr=0.1, weight_decay=0.01)
    (h * torch.tensor([1e-3, -50.0, 7.0])).sum().backward()
    opt.step()
    decayed = torch.tensor([1.0, -2.0, 3.0]) * (1 - 0.1 * 0.01)
    assert torch.allclose(h.detach(), decayed - 0.1 * torch.tensor([1.0, -1.0, 1.0]), atol=1e-5)

# -----------------------------------------------------------------------------
# MM-BD's Gamma null


def _gamma_sample(shape, scale, n=200_000, seed=0):
    with torch.random.fork_rng(devices=[]):  # _standard_gamma draws from the global generator
        torch.manual_seed(seed)
        return scale * torch._standard_gamma(torch.full((n,), shape, dtype=torch.float64))


@pytest.mark.parametrize('shape,scale', [(0.5, 2.0), (2.5, 1.7), (30.0, 0.1)])
def test_gamma_mle_recovers_parameters_of_a_large_sample(shape, scale):
    from bench.baselines import mmbd
    a, s = mmbd.gamma_fit(_gamma_sample(shape, scale))
    assert a == pytest.approx(shape, rel=0.02) and s == pytest.approx(scale, rel=0.02)


def test_gamma_mle_solves_its_likelihood_equation():
    from bench.baselines import mmbd
    x = torch.tensor([0.3, 1.1, 2.0, 2.2, 4.5, 0.9, 1.7, 3.3, 0.6], dtype=torch.float64)
    a, s = mmbd.gamma_fit(x)
    at = torch.tensor(a, dtype=torch.float64)
    assert (at.log() - torch.digamma(at)).item() == pytest.approx((x.mean().log() - x.log().mean()).item(), abs=1e-10)
    assert a * s == pytest.approx(x.mean().item())


def test_gamma_p_value_outlier_degenerate_and_non_positive_cases():
    from bench.baselines import mmbd
    base = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 1.0, 0.98]
    assert mmbd.max_p_value(base + [30.0])[0] < 1e-6
    assert mmbd.max_p_value(base + [1.25])[0] > 0.05
    assert mmbd.max_p_value([2.0, 2.0, 2.0, 2.0])[0] == 1.0  # equal statistics: nothing stands out
    assert mmbd.max_p_value([2.0, 2.0, 2.0, 5.0])[0] == 0.0
    p, (shape, loc, scale) = mmbd.max_p_value([-1.0, 0.0, 0.5, 2.0, 1.0])  # shifted below the minimum
    assert loc < -1.0 and shape > 0 and scale > 0 and 0 < p <= 1
    assert mmbd.max_p_value([0.0, 5.0])[0] == 1.0  # one null point: no test


def test_gamma_p_value_matches_the_exponential_closed_form_at_shape_one():
    from bench.baselines import mmbd
    # gammainc(1, x) = 1 - exp(-x): the Gamma CDF the p-value uses, at shape 1
    x = torch.tensor([0.1, 1.0, 4.0], dtype=torch.float64)
    assert torch.allclose(torch.special.gammainc(torch.ones(3, dtype=torch.float64), x), 1 - torch.exp(-x))

# -----------------------------------------------------------------------------
# MAD statistics of NC and L1/MAD


def test_nc_anomaly_index_hand_computed():
    from bench.baselines import nc
    # median 3, |deviations| 2 1 0 1 7, MAD 1: (3 - 1) / 1.4826
    assert nc.anomaly_index([1.0, 2.0, 3.0, 4.0, 10.0]) == pytest.approx(2 / 1.4826)
    # even count: median (5 + 6) / 2 = 5.5; |deviations| 4.5 1.5 .5 .5 2.5 3.5, MAD (1.5 + 2.5) / 2 = 2
    assert nc.anomaly_index([9.0, 4.0, 5.0, 1.0, 6.0, 8.0]) == pytest.approx(4.5 / (1.4826 * 2))
    assert nc.anomaly_index([3.0, 3.0, 3.0]) == 0.0


def test_l1mad_robust_z_is_signed():
    from bench.baselines import l1mad
    z = l1mad.robust_z([1.0, 2.0, 3.0, 4.0, 10.0])
    assert z == pytest.approx([-2 / 1.4826, -1 / 1.4826, 0.0, 1 / 1.4826, 7 / 1.4826])


def test_l1mad_search_brackets_then_bisects(monkeypatch):
    # A fake trial: class c succeeds iff its weight is at most thresholds[c]; the search must land just below.
    from bench.baselines import l1mad
    thresholds = torch.tensor([0.05, 3.0, 2e-5], dtype=torch.float64)  # class 2 fails from w0 = 1e-2 down to 1e-4
    monkeypatch.setitem(l1mad.HYP, 'rounds', 14)
    monkeypatch.setitem(l1mad.HYP, 'w0', 1e-2)
    monkeypatch.setattr(l1mad, 'trial', lambda net, u0, w, mean, std: w.double() <= thresholds)
    found = l1mad.largest_weights(None, torch.zeros(3, 3, 2, 2), None, None)
    for got, want in zip(found, thresholds.tolist()):
        assert want / 1.01 < got <= want  # bracketed within a decade, then bisected to under 1%
