"""Read and write the contest's sample format, safely.

A sample is one folder:
    model.pt      the state dict of a PreActResNet18
    metadata.pt   {'num_classes', 'test_images_folder_address' (relative, e.g. './test_dataset'),
                   'transformation' (a pickled torchvision Compose), 'ground_truth' (0 backdoored, 1 clean)}
    test_dataset/ clean test images named {index}_{label}.jpg
    defence_inputs/  (bench zoo only, never shown to a model-level detector) clean/ and triggered/ test
                  images as lossless {index}_{label}.png, label = the true class: the inputs that the
                  input-level and repair defences (bench/defences.py) are scored on

Both .pt files are untrusted: they are loaded with weights_only=True, which runs no code, and only the
torchvision transform classes below are allowed to be rebuilt from metadata.pt. A file that needs
anything else is refused with SampleError.
"""
import copy
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

import solution
from model_arch import PreActResNet18

# Every class a contest-style transform may pickle; nothing else is rebuilt from metadata.pt.
SAFE_TRANSFORMS = [
    T.Compose, T.Resize, T.CenterCrop, T.ToTensor, T.PILToTensor, T.ConvertImageDtype, T.Normalize,
    T.Grayscale, T.Pad, T.ToPILImage, T.InterpolationMode,
]
# torchvision transforms that are nn.Modules pickle their (empty) hook dictionaries as OrderedDicts,
# which weights_only already allows.


WEAK_ASR = 80.0  # a backdoored model below this attack success rate is reported apart as weak


class SampleError(Exception):
    """A sample folder that cannot be used; the message names the file and the problem."""


@dataclass
class Sample:
    path: str
    state_dict: dict
    num_classes: int
    transformation: object
    images: str           # absolute path of the image folder
    ground_truth: int     # 0 backdoored, 1 clean, -1 unknown
    metadata: dict


def _safe_load(path):
    try:
        with torch.serialization.safe_globals(SAFE_TRANSFORMS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise SampleError(f'{path}: missing') from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SampleError(f'{path}: refused or unreadable ({type(e).__name__}: {first})') from None


def read(folder):
    """Load one sample folder; raises SampleError with a one-line reason."""
    meta = _safe_load(os.path.join(folder, 'metadata.pt'))
    if not isinstance(meta, dict):
        raise SampleError(f'{folder}/metadata.pt: expected a dict, got {type(meta).__name__}')
    missing = [k for k in ('num_classes', 'test_images_folder_address', 'transformation') if k not in meta]
    if missing:
        raise SampleError(f'{folder}/metadata.pt: missing keys {missing}')
    state = _safe_load(os.path.join(folder, 'model.pt'))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise SampleError(f'{folder}/model.pt: expected a state dict of tensors')
    root = os.path.realpath(folder)
    images = os.path.realpath(os.path.join(root, str(meta['test_images_folder_address'])))
    if os.path.commonpath([root, images]) != root:
        raise SampleError(f'{folder}: test_images_folder_address {meta["test_images_folder_address"]!r} '
                          'points outside the sample folder')
    if not os.path.isdir(images):
        raise SampleError(f'{folder}: image folder {meta["test_images_folder_address"]!r} not found')
    truth = meta.get('ground_truth', -1)
    return Sample(folder, state, int(meta['num_classes']), meta['transformation'], images,
                  int(truth) if truth is not None else -1, meta)


def build_model(state_dict, num_classes):
    """A PreActResNet18 of the width the state dict has, with its weights; eval mode, CPU."""
    w = state_dict.get('conv1.weight')
    if w is None or w.dim() != 4:
        raise SampleError('model.pt: no conv1.weight of a PreActResNet18')
    model = PreActResNet18(num_classes=num_classes, width=w.shape[0])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise SampleError(f'model.pt: does not fit PreActResNet18({num_classes}, width={w.shape[0]}): '
                          f'{str(e).splitlines()[0]}') from None
    return model.eval()


def write(folder, state_dict, num_classes, transformation, images, labels, ground_truth, extra=None):
    """Write a sample: images uint8 (N, 3, H, W) saved as {index}_{label}.jpg (quality 95)."""
    img_dir = os.path.join(folder, 'test_dataset')
    os.makedirs(img_dir, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        arr = img.permute(1, 2, 0).numpy().astype(np.uint8)  # (H, W, 3)
        Image.fromarray(arr, 'RGB').save(os.path.join(img_dir, f'{i}_{int(label)}.jpg'), quality=95)
    meta = {'num_classes': int(num_classes), 'test_images_folder_address': './test_dataset',
            'transformation': transformation, 'ground_truth': int(ground_truth)}
    meta.update(extra or {})
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, os.path.join(folder, 'model.pt'))
    torch.save(meta, os.path.join(folder, 'metadata.pt'))


INPUT_KINDS = ('clean', 'triggered')


def write_inputs(folder, kind, images, labels):
    """Write defence inputs of one kind: images uint8 (N, 3, H, W) as lossless PNGs."""
    if kind not in INPUT_KINDS:
        raise ValueError(f'kind must be one of {INPUT_KINDS}, got {kind!r}')
    out = os.path.join(folder, 'defence_inputs', kind)
    os.makedirs(out, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img.permute(1, 2, 0).numpy().astype(np.uint8), 'RGB').save(
            os.path.join(out, f'{i}_{int(label)}.png'))


def load_inputs(folder, kind, transformation):
    """Defence inputs of one kind as the model sees them: (x (N, 3, H, W), labels (N,)), or None when the
    sample has none (a sample not written by bench.zoo, or a clean model's triggered inputs)."""
    where = os.path.join(folder, 'defence_inputs', kind)
    if not os.path.isdir(where):
        return None
    xs, ys = [], []
    for path, label in solution._list_images(where):
        img = solution._open_rgb(path)
        if img is None:
            raise SampleError(f'{path}: not a readable image')
        xs.append(solution._apply(transformation, img, os.path.basename(path)))
        ys.append(label)
    if not xs:
        return None
    return solution._stack(xs), torch.tensor(ys, dtype=torch.long)


def read_index(root):
    """zoo.jsonl rows by sample folder name ({} when the folder has no index)."""
    path = os.path.join(root, 'zoo.jsonl')
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r['name']: r for r in rows}


def is_sample(folder):
    return os.path.isfile(os.path.join(folder, 'metadata.pt'))


def name_of(folder):
    """A sample's name: its folder's own name (the key of zoo.jsonl and of records)."""
    return os.path.basename(os.path.normpath(folder))


def find(root, match='', exact=False):
    """Sample folders under root (root itself if it is one), sorted; only those whose folder name
    contains `match` (with exact: is `match`; an empty match keeps all)."""
    if is_sample(root):
        out = [root]
    else:
        out = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # a set may link its samples
            if 'metadata.pt' in filenames:
                out.append(dirpath)
                dirnames[:] = []
            dirnames.sort()
    return sorted(f for f in out if not match or (name_of(f) == match if exact else match in name_of(f)))


def load_images(folder, transformation):
    """The clean images of a folder as the detectors see them: (x (N, 3, H, W), labels (N,))."""
    x, y, _ = solution.load_images(folder, transformation)
    return x, y


# -----------------------------------------------------------------------------
# Helpers the baseline detectors share

def frozen_copy(model):
    """(net, device): a float32, eval-mode copy with gradients off, on the model's device; the caller's model
    is left exactly as it was."""
    net = copy.deepcopy(model).float().eval().requires_grad_(False)
    return net, next(net.parameters()).device


MAD_CONSISTENCY = 1.4826  # MAD * this estimates the standard deviation of a normal sample


def normalize_of(transformation):
    """(mean, std) of the transform's Normalize as (1, 3, 1, 1) tensors; (0, 1) when it has none."""
    for t in getattr(transformation, 'transforms', [transformation]):
        if isinstance(t, T.Normalize):
            mean = torch.as_tensor(t.mean, dtype=torch.float32).flatten() * torch.ones(3)  # one value: all channels
            std = torch.as_tensor(t.std, dtype=torch.float32).flatten() * torch.ones(3)
            return mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
    return torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)


def robust_z(values):
    """Signed (x - median) / (1.4826 * MAD); a zero MAD is floored (no division by zero)."""
    x = torch.as_tensor(values, dtype=torch.float64)
    med = torch.quantile(x, 0.5)  # the mean of the two middle values for an even count
    mad = torch.quantile((x - med).abs(), 0.5)
    mad = mad.clamp(min=1e-12 * max(1.0, med.abs().item()))
    return ((x - med) / (MAD_CONSISTENCY * mad)).tolist()
