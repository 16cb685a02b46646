"""bench.attacks and bench.train: trigger contracts for every attack, poisoning shares, one real backdoor."""
import json

import pytest
import torch

from bench import attacks
from bench.data import Dataset
from bench.train import accuracy, attack_success, random_crop, train
from model_arch import PreActResNet18

torch.set_num_threads(1)

# Keep the trained attacks' setup to a few steps: the tests check contracts, not trigger quality.
CHEAP = {"iad": dict(mask_steps=3, steps=3, batch=8), "lc": dict(steps=2), "trojannn": dict(steps=3, batch=8)}
# L∞ budgets of the attacks that promise one (BPP: half a quantisation step, without dithering).
LINF = {"blended": 0.2, "adap_blend": 0.2, "sig": 40 / 255, "ssba": 6 / 255, "lf": 51 / 255, "bpp": 1 / 14}


def tiny_data(size=16, classes=4, per_class=100, seed=0):
    """A stand-in data set: class c is the colour given by the bits of c + 1, plus noise; learnt in seconds."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[(c + 1) >> b & 1 for b in range(3)] for c in range(classes)], dtype=torch.float32)

    def split(n):
        y = torch.arange(classes).repeat_interleave(n)
        x = 0.1 + 0.4 * colours[y].view(-1, 3, 1, 1) + 0.2 * torch.rand(len(y), 3, size, size, generator=g)
        return (x * 255).round().to(torch.uint8), y  # (N, 3, size, size)

    x_train, y_train = split(per_class)
    x_test, y_test = split(per_class // 4)
    return Dataset("tiny", x_train, y_train, x_test, y_test, classes, (0.5,) * 3, (0.25,) * 3, False, True)


def built(name, size, target=1, seed=0, **params):
    """An attack with its setup done (against an untrained toy model where one is needed)."""
    attack = attacks.make(name, target, size, seed=seed, **{**CHEAP.get(name, {}), **params})
    model = PreActResNet18(4, 4).eval() if attack.needs_model else None
    attack.setup(tiny_data(size, per_class=10), torch.Generator().manual_seed(0), model=model)
    return attack


def images(n, size, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("name", attacks.NAMES)
def test_trigger_contract(name, size):
    attack = built(name, size)
    x = images(6, size)
    out = attack.trigger(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, attack.trigger(x)), "trigger must be deterministic"
    assert (out - x).abs().mean() > 1e-3, "trigger barely changes the image"
    assert (out - x).abs().max() <= LINF.get(name, 1.0) + 1e-6
    assert json.loads(json.dumps(attack.params))["size"] == size, "params go into the zoo index as JSON"


@pytest.mark.parametrize("name", attacks.NAMES)
def test_poison_batch_share_and_labels(name):
    attack = built(name, 16, target=1)
    x, y = images(200, 16), torch.arange(10).repeat(20)  # 20 images per class, 20 of the target
    xp, yp = attack.poison_batch(x, y, torch.Generator().manual_seed(0))
    changed = (xp != x).flatten(1).any(1)  # (200,)
    relabelled = yp != y
    if attack.clean_label:
        assert not relabelled.any()
        assert (y[changed] == 1).all(), "clean-label poison only touches target-class images"
        assert changed.sum() == round(attack.rate * 20)
    else:
        assert relabelled.sum() == round(attack.rate * 200)
        assert (yp[relabelled] == 1).all() and (y[relabelled] != 1).all()
        assert changed[relabelled].all()
        cover = round(attack.cover_ratio * attack.rate * 200) if attack.cover else 0
        assert changed.sum() == relabelled.sum() + cover, "cover samples keep their labels"
    assert torch.equal(x, images(200, 16)), "poison_batch must not modify its input"


@pytest.mark.parametrize("name", ["badnets", "blended"])
def test_seeds_give_different_triggers(name):
    x = images(2, 32)
    outs = [attacks.make(name, 0, 32, seed=s).trigger(x) for s in range(4)]
    assert all(not torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(outs[1], attacks.make(name, 0, 32, seed=1).trigger(x))


def test_unknown_options_fail_clearly():
    with pytest.raises(ValueError, match="badnets"):
        attacks.make("nope", 0, 32)
    with pytest.raises(ValueError, match="alpha"):
        attacks.make("blended", 0, 32, alpah=0.3)
    with pytest.raises(ValueError, match="white"):
        attacks.make("badnets", 0, 32, pattern="purple")
    with pytest.raises(ValueError, match="adv"):
        train(PreActResNet18(4, 4), tiny_data(per_class=4), adv="trades", epochs=1)


def test_random_crop_matches_slicing():
    x = images(5, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = random_crop(x, 2, g1)
    dy, dx = torch.randint(5, (5,), generator=g2), torch.randint(5, (5,), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(5):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])


def test_badnets_backdoor_end_to_end():
    data = tiny_data(per_class=200)
    attack = attacks.make("badnets", 0, 16, patch=4, loc="bottom_right", pattern="checker", rate=0.2)
    torch.manual_seed(0)
    model = PreActResNet18(4, 8)
    # lr 0.02 at batch 32: at 0.05 some seeds stay stuck on the trivially easy colour cue (seen 1 in 5)
    result = train(model, data, attack, epochs=6, batch=32, lr=0.02, log=lambda s: None)
    assert not model.training
    assert result["asr"] > 80, result
    assert result["clean_acc"] > 50, result  # chance is 25
    assert result["clean_acc"] == pytest.approx(accuracy(model, data))
    assert result["asr"] == pytest.approx(attack_success(model, data, attack))


def test_to_gray_matches_torchvision():
    from torchvision.transforms.functional import rgb_to_grayscale
    x = images(3, 8)
    assert torch.allclose(attacks.to_gray(x), rgb_to_grayscale(x, num_output_channels=3), atol=1e-6)


def test_train_is_deterministic_on_gray_data_with_adversarial_training():
    data = tiny_data(size=12, per_class=16)
    data.gray = True
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = PreActResNet18(4, 4)
        train(model, data, attacks.make("blended", 1, 12), epochs=1, batch=16, adv="fgsm", log=lambda s: None)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("name", ["lc", "trojannn"])
def test_train_sets_up_attacks_that_need_a_model(name):
    data = tiny_data(size=12, per_class=16)
    torch.manual_seed(0)
    lines = []
    result = train(PreActResNet18(4, 4), data, attacks.make(name, 1, 12, **CHEAP[name]), epochs=1, batch=16,
                   log=lines.append)
    assert result["asr"] is not None
    assert any(line.startswith("ref epoch 1/1") for line in lines), "a clean reference is trained first"
    assert lines[-1].startswith("epoch 1/1 loss")
    lines.clear()
    train(PreActResNet18(4, 4), data, attacks.make(name, 1, 12, **CHEAP[name]), epochs=1, batch=16,
          reference=PreActResNet18(4, 4).eval(), log=lines.append)
    assert len(lines) == 1, "a given reference model is used as is"


def test_settings_merge_defaults_and_reject_unknown_names():
    assert attacks.settings("lc")["robust"] is True and attacks.settings("lc", rate=0.5)["rate"] == 0.5
    assert attacks.make("lc", 1, 12).robust_eps == attacks.settings("lc")["eps"]
    assert attacks.make("lc", 1, 12, robust=False).robust_eps == 0.0
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.settings("nope")
    with pytest.raises(ValueError, match="unknown params"):
        attacks.settings("lc", radius=1)


@pytest.mark.parametrize("name, robust", [("lc", True), ("trojannn", False)])
def test_reference_is_robust_only_where_the_attack_asks(name, robust, monkeypatch):
    """LC perturbs its images against an adversarially trained model (at its own PGD radius), as in
    Turner et al.; TrojanNN fine-tunes a plain one. The poisoned model itself is trained as asked."""
    import bench.train as bt
    calls, real = [], bt.adversarial
    monkeypatch.setattr(bt, "adversarial", lambda *a, **k: calls.append((a[4], a[5])) or real(*a, **k))
    attack = attacks.make(name, 1, 12, **CHEAP[name])
    torch.manual_seed(0)
    train(PreActResNet18(4, 4), tiny_data(size=12, per_class=16), attack, epochs=1, batch=16, log=lambda s: None)
    assert calls == ([("fgsm", attack.params["eps"])] * 4 if robust else []), calls
