"""The input-level and repair defences (STRIP, pruning, GoodNet) on hand-built models whose backdoor is
known exactly, and bench.defences over a smoke zoo."""
import torch
import torch.nn as nn

from bench import defences, zoo
from bench.baselines import fineprune, strip

MEAN, STD = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)  # pixels p -> (p - 0.5) / 0.5


def _stamp(x):
    """A white 4 x 4 patch in the corner (normalised units: pixel 1 -> 1)."""
    x = x.clone()
    x[:, :, :4, :4] = 1.0
    return x


class PatchTrojan(nn.Module):
    """A fixed random linear classifier, except that a saturated white corner patch forces class 0.
    Superimposing any image on a patched one keeps the patch saturated, so STRIP must see low entropy."""

    def __init__(self, k=5):
        super().__init__()
        self.base = nn.Linear(3 * 16 * 16, k)
        nn.init.normal_(self.base.weight, std=0.05)

    def forward(self, x):
        fired = (x[:, :, :4, :4].mean((1, 2, 3)) > 0.95).float()  # (N,)
        logits = self.base(x.flatten(1))
        logits[:, 0] += 30 * fired
        return logits


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) - 0.5) / 0.5  # uniform pixels, normalised


def test_strip_separates_a_dominant_trigger_and_not_clean_inputs():
    torch.manual_seed(0)
    net = PatchTrojan().eval()
    pool, clean = _images(20, 1), _images(60, 2)
    out = strip.evaluate(net, pool, clean, _stamp(_images(40, 3)), MEAN, STD)
    assert out['far'] <= 0.05 and out['n_triggered'] == 40 and out['n_clean'] == 30
    assert out['entropy_triggered'] < out['entropy_clean']
    same = strip.evaluate(net, pool, clean, _images(40, 4), MEAN, STD)  # "triggered" inputs that are clean
    assert same['far'] >= 0.8
    assert strip.evaluate(net, pool, clean, None, MEAN, STD)['far'] is None


class ChannelTrojan(nn.Module):
    """layer4 = ReLU(1x1 conv): channels 1-3 copy the colour channels (class c = brightest channel c - 1);
    channel 0 fires only where all three are bright (the white patch) and the classifier maps it
    strongly to class 0. Clean images leave channel 0 dormant, so pruning removes it first."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, :, 0, 0] = 1.0
            conv.bias[0] = -2.5  # sum of the three channels > 2.5: only a near-white pixel
            for c in range(3):
                conv.weight[c + 1, c, 0, 0] = 1.0
        self.layer4 = nn.Sequential(conv, nn.ReLU())
        self.linear = nn.Linear(4, 3)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
            self.linear.weight[0, 0] = 200.0
            for c in range(3):
                self.linear.weight[c, c + 1] = 1.0

    def forward(self, x):
        return self.linear(self.layer4(x).mean((2, 3)))


def _coloured(n, seed):
    """Images of class c: colour channel c raised; pixels in [0, 0.6] so never white."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.2 * torch.rand(n, 3, 8, 8, generator=g)
    x[torch.arange(n), y] += 0.4
    return x, y


def test_pruning_removes_the_dormant_backdoor_channel_first_and_goodnet_flags_its_inputs():
    net = ChannelTrojan().eval()
    x, y = _coloured(60, 0)
    trig = x[y != 0].clone()
    trig[:, :, :4, :4] = 1.0
    out = fineprune.evaluate(net, x, y, trig, target=0)
    assert out['base_acc'] == 100 and out['base_asr'] == 100
    assert [s['drop'] for s in out['stages']] == list(fineprune.HYP['drops'])
    first = out['stages'][0]
    assert first['pruned'] == 2  # channel 0 (dormant) costs nothing; the next one costs a class
    assert first['asr'] == 0 and first['goodnet_flagged'] == 100
    clean_only = fineprune.evaluate(net, x, y)
    assert clean_only['base_asr'] is None and clean_only['stages'][0]['asr'] is None


def test_defences_cli_on_the_smoke_zoo(smoke_zoo, capsys):
    table = defences.main([smoke_zoo, '--threads', '1'])
    printed = capsys.readouterr().out
    assert 'skipped' not in printed
    assert set(table) == {'clean', 'badnets'}
    assert table['clean']['strip_far'] is None and 0 <= table['clean']['strip_frr'] <= 1
    bd = table['badnets']
    assert bd['base_asr'] > 80 and 0 <= bd['strip_far'] <= 1
    assert set(bd['stages']) == {f'{d:g}' for d in fineprune.HYP['drops']}


def test_defence_inputs_are_class_balanced_and_triggered_ones_exclude_the_target():
    from bench import attacks, data
    ds = data.load('synthetic', num_classes=10, n_train=10, n_test=30)
    atk = attacks.make('badnets', 4, ds.size, seed=0)
    cx, cy, tx, ty = zoo.defence_inputs(ds, atk, seed=0)
    assert len(cx) == min(zoo.DEFENCE_IMAGES, len(ds.y_test)) and cx.dtype == torch.uint8
    assert cy.bincount(minlength=10).min() >= len(cx) // 10 - 1
    assert (ty != 4).all() and len(tx) == int((cy != 4).sum())
    assert not torch.equal(tx, cx[cy != 4])  # the trigger is on


def test_oracle_measures_the_true_trigger_on_the_smoke_zoo(smoke_zoo, capsys, tmp_path):
    """bench.oracle pairs each triggered input with its clean original: a BadNets patch of at most 5 px
    changes the conv1 map (3 x 3 kernels) at no more than 7 x 7 of its 32 x 32 positions, so the share
    carrying 90% of the change is small (a wrong pairing would change every position). Clean samples
    are skipped."""
    import solution
    from bench import oracle
    out = tmp_path / 'oracle.json'
    before = dict(solution.HYP)
    oracle.main([smoke_zoo, '--set', 'images=4', '--set', 'steps=2', '--threads', '1', '--json', str(out)])
    assert solution.HYP == before  # the --set settings held for that run only
    rows = __import__('json').loads(out.read_text())
    assert [r['attack'] for r in rows] == ['badnets']
    r = rows[0]
    assert 0 < r['pos90'] <= 49 / 1024 and r['r'] > 0 and r['true_S'] > 0
    assert 1 <= r['rank'] <= 10 and r['source'] == 'run' and 0 <= r['p_true'] <= 1 and 0 < r['cut'] <= 1


def test_oracle_refuses_a_trigger_that_changes_nothing():
    from bench import oracle
    from model_arch import PreActResNet18
    x = _images(6, 5)
    net = PreActResNet18(num_classes=4, width=4)
    try:
        oracle.trigger_terms(net, x, x.clone(), target=1)
    except ValueError as e:
        assert 'unchanged' in str(e)
    else:
        raise AssertionError('an identical "triggered" set must be refused')
