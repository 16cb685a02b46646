"""Hostile and odd inputs to detect(): each gets a verdict computed safely or a clear error."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import solution
from conftest import CIFAR_LIKE, TINY, write_images
from model_arch import PreActResNet18


def _ok(ev):
    assert ev['verdict'] in (0, 1) and 0.0 <= ev['p_value'] <= 1.0
    return ev


# --- the folder ------------------------------------------------------------------------------------

def test_missing_folder_is_a_value_error(toy_model, tmp_path):
    with pytest.raises(ValueError, match='not a folder'):
        solution.detect(toy_model, 10, str(tmp_path / 'nope'), CIFAR_LIKE)


def test_folder_path_of_wrong_type_is_a_type_error(toy_model):
    with pytest.raises(TypeError, match='path'):
        solution.detect(toy_model, 10, 123, CIFAR_LIKE)


@pytest.mark.parametrize('content', ['empty', 'junk', 'one'])
def test_too_few_readable_images_runs_data_free(toy_model, tmp_path, fast, content):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    if content == 'junk':
        (folder / '0_0.jpg').write_bytes(b'not a jpeg at all')
        (folder / 'notes.txt').write_text('hello')
    if content == 'one':
        write_images(folder, n=1)
    ev = _ok(solution.evidence(toy_model, 10, str(folder), CIFAR_LIKE))
    assert ev['data_free']


def test_own_norm_divides_each_class_by_its_own_images_margins(toy_model, tmp_path, image_folder, fast,
                                                               monkeypatch):
    monkeypatch.setitem(solution.HYP, 'own_norm', True)
    monkeypatch.setitem(solution.HYP, 'log', False)  # the plain product, as the test below reads it
    ev = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert any(o > 0 for o in ev['own_margin'])
    for s, raw, o, f, c in zip(ev['per_class'], ev['per_class_raw'], ev['own_margin'], ev['landing'], ev['core']):
        assert s == pytest.approx(raw * f * c / (1 + o))
    empty = tmp_path / 'empty'
    empty.mkdir()
    ev = _ok(solution.evidence(toy_model, 10, str(empty), CIFAR_LIKE))
    assert ev['data_free'] and ev['own_margin'] == [0.0] * 10  # synthesised images belong to no class


def test_landing_multiplies_each_class_and_is_neutral_without_labelled_images(toy_model, tmp_path, image_folder,
                                                                               fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'landing', 1.0)
    monkeypatch.setitem(solution.HYP, 'log', False)
    ev = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert len(set(ev['landing'])) > 1 and all(f >= 0 for f in ev['landing'])
    for s, raw, f, c in zip(ev['per_class'], ev['per_class_raw'], ev['landing'], ev['core']):
        assert s == pytest.approx(raw * f * c)
    monkeypatch.setitem(solution.HYP, 'landing', 0.5)  # an exponent: the square root of the same factors
    half = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert half['landing'] == pytest.approx([f ** 0.5 for f in ev['landing']])
    monkeypatch.setitem(solution.HYP, 'landing', -1.0)
    with pytest.raises(ValueError, match='landing'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    monkeypatch.setitem(solution.HYP, 'landing', 1.0)
    empty = tmp_path / 'empty'
    empty.mkdir()
    ev = _ok(solution.evidence(toy_model, 10, str(empty), CIFAR_LIKE))
    assert ev['data_free'] and ev['landing'] == [1.0] * 10


def test_the_own_floor_reads_the_clean_images_with_the_landing_factor_off(toy_model, image_folder, tiny, monkeypatch):
    """own_floor needs the clean images' penultimate features, which the landing factor otherwise brings."""
    monkeypatch.setitem(solution.HYP, 'landing', 0.0)
    monkeypatch.setitem(solution.HYP, 'exclude_own', True)
    monkeypatch.setitem(solution.HYP, 'own_floor', True)
    ev = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert all(o > 0 for o in ev['own_margin'])  # every class has images in the folder: a softplus > 0 each


def test_core_factor_enters_the_patch_test_only(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'refine', 0.0)  # refined, the direction is one patch already (next test)
    monkeypatch.setitem(solution.HYP, 'core', 1.0)
    monkeypatch.setitem(solution.HYP, 'log', False)  # the plain product, as the test below reads it
    ev = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert any(c < 1 for c in ev['core']) and all(0 <= c <= 1 for c in ev['core'])
    monkeypatch.setitem(solution.HYP, 'core', 0.0)
    off = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert off['core'] == [1.0] * 10
    assert ev['per_class_raw'] == pytest.approx(off['per_class_raw'])  # the same optimisation
    assert ev['per_class'] == pytest.approx([s * c for s, c in zip(off['per_class'], ev['core'])])
    if ev['per_class_contrast'] is not None:  # the contrast is built from the uncut statistics
        assert ev['per_class_contrast'] == pytest.approx(off['per_class_contrast'])
    monkeypatch.setitem(solution.HYP, 'core', -1.0)
    with pytest.raises(ValueError, match='core'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_with_the_refinement_the_cut_is_not_scored_and_would_change_nothing(toy_model, image_folder, fast, monkeypatch):
    """The refinement keeps the patch pass's direction to the `area` share of its positions, so cutting it
    to that share gives the direction back: the cut is not scored (_cuts) and every core factor is 1."""
    monkeypatch.setitem(solution.HYP, 'core', 1.0)
    monkeypatch.setitem(solution.HYP, 'refine', 1.0)
    assert not solution._cuts(solution._area(), solution.HYP['refine'])
    ev = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert ev['core'] == [1.0] * 10
    g = torch.Generator().manual_seed(0)
    split = solution._Split(toy_model, solution.HYP['split'])  # where the search runs
    with torch.no_grad():
        h0 = split.features(torch.rand(4, 3, 32, 32, generator=g))
    u0 = torch.nn.functional.normalize(torch.randn(2, 1, h0[0].numel(), generator=g), dim=2)
    u = solution._refine(split, h0, u0, torch.tensor([1, 3]).repeat_interleave(4), solution._area(), 3)
    assert not torch.allclose(solution._core(u0, h0.shape[1:], solution._area()), u0, atol=1e-3)  # a start is cut
    assert torch.allclose(solution._core(u, h0.shape[1:], solution._area()), u, atol=1e-6)  # a refined one is not


def test_log_takes_log1p_of_each_class_and_the_test_follows(toy_model, image_folder, fast, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'log', True)
    ev = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    product = [raw * f * c for raw, f, c in zip(ev['per_class_raw'], ev['landing'], ev['core'])]
    assert ev['per_class'] == pytest.approx([math.log1p(v) for v in product])
    assert ev['p_patch'] == pytest.approx(solution.max_p_value(ev['per_class'], leave_out=ev['absent']))
    monkeypatch.setitem(solution.HYP, 'log', False)
    off = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert off['per_class'] == pytest.approx(product)
    monkeypatch.setitem(solution.HYP, 'log', 'yes')
    with pytest.raises(ValueError, match='log'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_exact_null_judges_the_same_statistics(toy_model, image_folder, fast, monkeypatch):
    plug = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    monkeypatch.setitem(solution.HYP, 'null', 'exact')
    exact = _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    assert exact['per_class'] == pytest.approx(plug['per_class'])  # only the p-value changes
    assert exact['p_patch'] == pytest.approx(solution.max_p_value(exact['per_class'], null='exact', leave_out=exact['absent']))
    assert exact['p_patch'] >= plug['p_patch'] - 1e-9  # the plug-in is the anti-conservative one
    monkeypatch.setitem(solution.HYP, 'null', 'bootstrap')
    with pytest.raises(ValueError, match='null'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_skips_hidden_non_image_subfolders_and_corrupt_files(toy_model, tmp_path, tiny):
    folder = write_images(tmp_path / 'imgs', n=10)
    good = solution.evidence(toy_model, 10, folder, CIFAR_LIKE)
    os.mkdir(os.path.join(folder, 'sub.jpg'))  # a folder with an image's name
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(folder, '.hidden_0.jpg'))
    open(os.path.join(folder, 'readme.md'), 'w').write('x')
    data = open(os.path.join(folder, '3_3.jpg'), 'rb').read()
    open(os.path.join(folder, '99_1.jpg'), 'wb').write(data[: len(data) // 3])  # truncated JPEG
    open(os.path.join(folder, '98_2.png'), 'wb').write(b'\x89PNG\r\n\x1a\n garbage')
    ev = _ok(solution.evidence(toy_model, 10, folder, CIFAR_LIKE))
    assert not ev['data_free']
    assert ev['per_class'] == good['per_class']  # the junk changed nothing


def test_grayscale_rgba_palette_16bit_and_mixed_sizes(toy_model, tmp_path, fast):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), 'L').save(folder / '0_0.png')
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), 'RGBA').save(folder / '1_1.png')
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert('P').save(folder / '2_2.png')
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(folder / '3_3.png')
    Image.fromarray(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)).save(folder / '4_4.jpg')
    for transform in (CIFAR_LIKE, T.Compose([T.ToTensor()])):  # with and without a Resize
        ev = _ok(solution.evidence(toy_model, 10, str(folder), transform))
        assert not ev['data_free'] and ev['images'] == 5


def test_many_images_are_capped(toy_model, tmp_path, fast):
    folder = write_images(tmp_path / 'imgs', n=20)
    for i in range(20, 3000):  # thousands of files: only a capped, class-balanced subset is read
        os.link(os.path.join(folder, f'{i % 20}_{i % 10}.jpg'), os.path.join(folder, f'{i}_{i % 10}.jpg'))
    xs, ys, _ = solution.load_images(folder, CIFAR_LIKE)
    assert len(xs) == solution.HYP['max_images']
    assert torch.bincount(ys, minlength=10).tolist() == [solution.HYP['max_images'] // 10] * 10


# --- num_classes -----------------------------------------------------------------------------------

@pytest.mark.parametrize('k, err', [(10.0, TypeError), ('10', TypeError), (True, TypeError), (1, ValueError),
                                    (0, ValueError), (9, ValueError)])
def test_bad_num_classes(toy_model, image_folder, k, err):
    with pytest.raises(err, match='num_classes'):
        solution.detect(toy_model, k, image_folder, CIFAR_LIKE)


def test_numpy_int_num_classes_is_accepted(toy_model, image_folder, fast):
    _ok(solution.evidence(toy_model, np.int64(10), image_folder, CIFAR_LIKE))


def test_two_classes_are_called_clean(image_folder, fast):
    model = PreActResNet18(num_classes=2, width=4).eval()
    ev = solution.evidence(model, 2, image_folder, CIFAR_LIKE)
    assert ev['verdict'] == 1 and ev['p_value'] == 1.0


# --- the model -------------------------------------------------------------------------------------

def test_training_mode_half_precision_frozen_and_data_parallel_models(image_folder, tiny):
    torch.manual_seed(0)
    base = PreActResNet18(num_classes=10, width=4).eval()
    ref = solution.evidence(base, 10, image_folder, CIFAR_LIKE)['per_class']
    frozen = PreActResNet18(num_classes=10, width=4)
    frozen.load_state_dict(base.state_dict())
    frozen.train().requires_grad_(False)
    assert solution.evidence(frozen, 10, image_folder, CIFAR_LIKE)['per_class'] == ref
    assert frozen.training  # left as the caller had it
    assert solution.evidence(nn.DataParallel(base), 10, image_folder, CIFAR_LIKE)['per_class'] == ref
    half = PreActResNet18(num_classes=10, width=4)
    half.load_state_dict(base.state_dict())
    half = half.half()
    _ok(solution.evidence(half, 10, image_folder, CIFAR_LIKE))
    assert next(half.parameters()).dtype == torch.float16


def test_model_missing_a_submodule_is_a_value_error(toy_model, image_folder):
    del toy_model.layer3
    with pytest.raises(ValueError, match='layer3'):
        solution.detect(toy_model, 10, image_folder, CIFAR_LIKE)


def test_not_a_model_is_a_type_error(image_folder):
    with pytest.raises(TypeError, match='nn.Module'):
        solution.detect(lambda x: x, 10, image_folder, CIFAR_LIKE)


def test_called_under_no_grad_and_inference_mode(toy_model, image_folder, tiny):
    with torch.no_grad():
        _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))
    with torch.inference_mode():
        _ok(solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE))


# --- the transformation ----------------------------------------------------------------------------

def test_transform_none_bare_callable_and_no_totensor(toy_model, image_folder, tiny):
    _ok(solution.evidence(toy_model, 10, image_folder, None))
    _ok(solution.evidence(toy_model, 10, image_folder, lambda img: TF.to_tensor(img)))
    _ok(solution.evidence(toy_model, 10, image_folder, T.Compose([T.Resize((32, 32))])))  # returns PIL images
    _ok(solution.evidence(toy_model, 10, image_folder, T.Compose([T.Resize((48, 48)), T.ToTensor()])))


def test_transform_that_is_not_callable_or_fails_is_reported(toy_model, image_folder):
    with pytest.raises(TypeError, match='callable'):
        solution.detect(toy_model, 10, image_folder, 'resize please')

    def broken(img):
        raise RuntimeError('boom')
    with pytest.raises(ValueError, match='transformation failed.*boom'):
        solution.detect(toy_model, 10, image_folder, broken)
    with pytest.raises(ValueError, match='channels'):
        solution.detect(toy_model, 10, image_folder, lambda img: torch.zeros(2, 8, 8))


def test_model_with_non_finite_outputs_is_a_value_error(toy_model, image_folder, fast):
    with torch.no_grad():
        toy_model.linear.weight[0, 0] = float('nan')
    with pytest.raises(ValueError, match='non-finite'):
        solution.detect(toy_model, 10, image_folder, CIFAR_LIKE)


def test_unknown_setting_value_is_a_value_error(toy_model, image_folder, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'reduce', 'median')
    with pytest.raises(ValueError, match='reduce'):
        solution.detect(toy_model, 10, image_folder, CIFAR_LIKE)


@pytest.mark.parametrize('bad', [(), (0.0,), (1.5,), 0.5, ('1',)])
def test_snapshots_must_be_shares_of_the_steps(monkeypatch, toy_model, image_folder, bad):
    monkeypatch.setitem(solution.HYP, 'snapshots', bad)
    with pytest.raises(ValueError, match='snapshots'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


@pytest.mark.parametrize('key', ['landing', 'contrast_power'])
@pytest.mark.parametrize('bad', [-1.0, float('nan'), float('inf'), '2', True])
def test_exponents_must_be_finite_numbers_at_least_zero(monkeypatch, toy_model, image_folder, key, bad):
    monkeypatch.setitem(solution.HYP, key, bad)
    with pytest.raises(ValueError, match=key):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


@pytest.mark.parametrize('setting', [('area', 0.0), ('mode', 'universal'), ('statistic', 'margin')])
def test_without_a_patch_pass_the_contrast_is_skipped(release_alone, monkeypatch, toy_model, image_folder, fast, setting):
    """The contrast compares a patch pass with a dense one; with no area limit (or in universal mode)
    there is no patch pass, and the 'margin' statistic can be negative: one pass, its own p-value."""
    monkeypatch.setitem(solution.HYP, 'contrast', True)
    monkeypatch.setitem(solution.HYP, *setting)
    e = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert e['per_class_dense'] is None and e['per_class_contrast'] is None
    assert e['p_value'] == e['p_patch'] == solution.max_p_value(e['per_class'], leave_out=e['absent'])


# --- which images are optimised ----------------------------------------------------------------------

def test_image_seed_draws_other_class_balanced_images_and_leaves_the_default_alone():
    labels = torch.arange(10).repeat(5)  # 50 images, 5 per class, in the folder's order
    first = solution._balanced_indices(labels, 20)
    assert sorted(first.tolist()) == list(range(20))  # the folder's order: the first two images of each class
    torch.manual_seed(7)
    before = torch.get_rng_state()
    draws = []
    for seed in (0, 1, 2):
        idx = solution._balanced_indices(labels, 20, seed)
        assert torch.bincount(labels[idx], minlength=10).tolist() == [2] * 10  # still two per class
        assert torch.equal(idx, solution._balanced_indices(labels, 20, seed))  # the same seed, the same images
        draws.append(set(idx.tolist()))
    assert torch.equal(torch.get_rng_state(), before)  # its own generator: the global RNG untouched
    assert len({frozenset(d) for d in draws} | {frozenset(first.tolist())}) == 4  # four different subsets


@pytest.mark.parametrize('bad', [True, -1, 1.5, '3'])
def test_image_seed_is_checked(toy_model, image_folder, monkeypatch, bad):
    monkeypatch.setitem(solution.HYP, 'image_seed', bad)
    with pytest.raises(ValueError, match='image_seed'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)


def test_draws_run_only_where_each_still_gets_the_top_rung(monkeypatch):
    monkeypatch.setitem(solution.HYP, 'draws', 3)
    monkeypatch.setitem(solution.HYP, 'images', 12)
    monkeypatch.setitem(solution.HYP, 'steps', 25)
    top = (12, 25)
    step_s = 1e-3  # the top rung costs 12 * 25 * 1e-3 = 0.3 s a class, 3 s for 10 classes
    assert solution._draws(step_s, 9.5, 10, 50, 0.0, top) == 3  # three draws of 3.17 s each fit
    assert solution._draws(step_s, 8.5, 10, 50, 0.0, top) == 1  # 2.83 s a draw: below the top rung
    assert solution._draws(step_s, 9.5, 10, 50, 0.0, (8, 25)) == 1  # one draw is not at the top itself
    assert solution._draws(step_s, 9.5, 10, 12, 0.0, top) == 1  # the folder holds one draw's images only
    monkeypatch.setitem(solution.HYP, 'draws', 1)
    assert solution._draws(step_s, 1e6, 10, 50, 0.0, top) == 1
    monkeypatch.setitem(solution.HYP, 'draws', 5)
    assert solution._draws(step_s, 1e6, 10, 50, 0.0, top) == 5
    assert solution._draw_seeds(3) == [None, 1, 2]
    monkeypatch.setitem(solution.HYP, 'image_seed', 7)
    assert solution._draw_seeds(3) == [7, 8, 9]


def test_draws_median_p_is_the_single_draws_run_apart(release_alone, toy_model, image_folder, tiny, monkeypatch):
    monkeypatch.setitem(solution.HYP, 'draws', 3)
    ev = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
    assert ev['draws'] == 3 and len(ev['p_draws']) == 3 and ev['images'] == TINY['images']
    assert ev['p_release'] == ev['p_value'] == sorted(ev['p_draws'])[1]
    assert ev['p_draws'][ev['draw']] == ev['p_value']
    monkeypatch.setitem(solution.HYP, 'draws', 1)
    for k, seed in enumerate((None, 1)):  # each draw is the one-draw run on that draw's images
        monkeypatch.setitem(solution.HYP, 'image_seed', seed)
        one = solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
        assert one['draws'] == 1 and one['p_draws'] == [one['p_value']]
        assert one['p_value'] == ev['p_draws'][k]


@pytest.mark.parametrize('bad', [0, True, 2.0, '3'])
def test_draws_is_checked(toy_model, image_folder, monkeypatch, bad):
    monkeypatch.setitem(solution.HYP, 'draws', bad)
    with pytest.raises(ValueError, match='draws'):
        solution.evidence(toy_model, 10, image_folder, CIFAR_LIKE)
