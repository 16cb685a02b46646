import contextlib
import os
import platform
import sys

# The toy models these tests train must be the same models on AVX2 and AVX-512 CPUs alike. torch (ATen),
# oneDNN and MKL choose their kernels by the CPU's instruction set, and with AVX-512 they sum in another
# order, so the same recipe trains another model: another draw (test_detect's BadNets model came out with
# its target second and the confirming test at p 0.12, where on AVX2 it is first at p 3e-11). Pin all
# three to AVX2 before torch is imported; a value the caller set stands.
if platform.machine().lower() in ('x86_64', 'amd64'):
    for key, value in (('ATEN_CPU_CAPABILITY', 'avx2'), ('ONEDNN_MAX_CPU_ISA', 'AVX2'), ('MKL_ENABLE_INSTRUCTIONS', 'AVX2')):
        os.environ.setdefault(key, value)

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere: solution.py and model_arch.py live at the root

from model_arch import PreActResNet18  # noqa: E402

CIFAR_LIKE = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])


def write_images(folder, n=20, size=32, classes=10, seed=0):
    """n random RGB JPEGs named {index}_{label}.jpg."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f'{i}_{i % classes}.jpg'))
    return str(folder)


@pytest.fixture
def image_folder(tmp_path):
    return write_images(tmp_path / 'test_dataset')


def make_toy_model():
    """The toy model: a width-8 PreActResNet18 for 10 classes, untrained, the same on every call."""
    torch.manual_seed(0)
    return PreActResNet18(num_classes=10, width=8).eval()


@pytest.fixture
def toy_model():
    return make_toy_model()


# Few steps: for tests of the contract, not of detection quality. A generous budget, so the plan
# (images x steps) never shrinks on a loaded machine and two calls can be compared exactly. One image
# draw, whatever HYP['draws'] says (the draws' own tests set it). 6 x 6 keeps both passes: it is above
# HYP['contrast_plan'] (30 images x steps per class).
FAST = dict(budget_s=600.0, draws=1, steps=6, min_steps=6, images=6)


# Fewer still, for tests of how inputs are read and the call is made: 4 x 2 is under
# HYP['contrast_plan'], so the patch pass runs alone, at about a quarter of FAST's cost.
TINY = dict(FAST, steps=2, min_steps=2, images=4)


def _set_hyp(monkeypatch, values):
    import solution
    for key, value in values.items():
        monkeypatch.setitem(solution.HYP, key, value)


@pytest.fixture
def fast(monkeypatch):
    """solution.HYP at FAST for one test."""
    _set_hyp(monkeypatch, FAST)


@pytest.fixture
def release_alone(monkeypatch):
    """The release's passes alone (HYP['confirm'] = 0, no margin test after them), for tests that plan,
    time or score those passes with the whole budget."""
    _set_hyp(monkeypatch, {'confirm': 0.0})


@pytest.fixture
def tiny(monkeypatch):
    """solution.HYP at TINY for one test."""
    _set_hyp(monkeypatch, TINY)


@pytest.fixture(scope='session')
def smoke_zoo(tmp_path_factory):
    """The smoke preset (a clean and a BadNets model, tiny), built once per test run at one torch thread
    (so a worker process at one thread builds the same bits without oversubscribing the cores); read-only."""
    from bench import zoo
    root = tmp_path_factory.mktemp('smoke-zoo')
    with one_torch_thread():
        zoo.build_zoo('smoke', str(root), log=lambda m: None)
    return str(root)


@contextlib.contextmanager
def one_torch_thread():
    """Run the block at one torch thread (the smoke zoo's: a model is bitwise the same only at the same
    threads), then restore the caller's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
