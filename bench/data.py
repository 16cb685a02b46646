"""Image-classification data sets for the bench, as uint8 tensors plus the contest transform.

`load(name)` returns a `Dataset`: train and test images as uint8 (N, 3, H, W) RGB tensors, int64 labels,
and the normalisation the model is trained with. `Dataset.transform()` builds the contest-style
torchvision `Compose` that the bench pickles into each sample's metadata.

Names (see `names()`):
- `synthetic`: procedurally generated, no files, deterministic from `seed`; the bench's default.
  Kw: num_classes (2..200), size (px), n_train and n_test (images per class).
- `cifar10`, `gtsrb`, `tiny32`, `tiny64`: npz files in DATA_ROOT or `root`; `cifar10` also reads
  torchvision's `cifar-10-batches-py/` (with a restricted unpickler).
- `mnist`, `fashion`: idx files (gz or plain), in the shared layout, torchvision's `MNIST/raw/` and
  `FashionMNIST/raw/`, or the Debian package's /usr/share/datasets/fashion-mnist.
Kw for every set: n_train and n_test, a cap on images *per class* (None = all), drawn with `seed`, so
every class stays present and small CPU zoos subsample deterministically.
"""
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("BENCH_DATA") or os.path.normpath(PROJECT_ROOT / ".." / "shared" / "data")
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))  # the contest's constants
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GRAY_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Normalize([0.5], [0.5]) on 3 equal channels
# Measured on the full train split of the shared npz files; fixed here so that a subsample or a user's
# own copy trains with the same transform.
GTSRB_STATS = ((0.3415, 0.3127, 0.3215), (0.2766, 0.2655, 0.2717))
TINY32_STATS = ((0.475, 0.4471, 0.393), (0.2549, 0.2456, 0.2568))


class DataMissing(Exception):
    """A data set's files are absent; the message is one line that says where they were looked for."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 (N, 3, H, W), RGB
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor  # uint8 (M, 3, H, W)
    y_test: torch.Tensor  # int64 (M,)
    num_classes: int
    mean: tuple  # 3 floats: the Normalize the model is trained with
    std: tuple
    gray: bool  # MNIST-like: the transform has Grayscale(3), so trainers turn triggered images gray too
    hflip: bool  # whether horizontal-flip augmentation suits the data

    @property
    def size(self) -> int:
        return self.x_train.shape[-1]

    def transform(self) -> T.Compose:
        """The contest-style transform, exactly the classes of the public samples so it pickles cleanly."""
        s = self.size
        if self.gray:
            return T.Compose([T.Resize((s, s)), T.Grayscale(num_output_channels=3), T.ToTensor(),
                              T.Normalize([0.5], [0.5])])
        return T.Compose([T.Resize((s, s)), T.ToTensor(), T.Normalize(self.mean, self.std)])


# ---------------------------------------------------------------------------------------------------------
# Subsampling and small helpers

def _per_class_cap(y, cap, gen):
    """Indices (sorted) of at most `cap` images per class, chosen with `gen`; None keeps everything."""
    if cap is None:
        return torch.arange(len(y))
    if cap < 1:
        raise ValueError(f"n_train/n_test is a per-class count and must be >= 1, got {cap}")
    keep = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:cap]])
    return torch.cat(keep).sort().values


def _finish(name, x_train, y_train, x_test, y_test, num_classes, stats, gray, hflip, seed, n_train, n_test):
    """Caps both splits per class and checks the labels before handing out a Dataset."""
    gen = torch.Generator().manual_seed(seed)
    i = _per_class_cap(y_train, n_train, gen)
    j = _per_class_cap(y_test, n_test, gen)
    x_train, y_train, x_test, y_test = x_train[i], y_train[i], x_test[j], y_test[j]
    for split, y in (("train", y_train), ("test", y_test)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name}: {split} labels outside 0..{num_classes - 1}")
    return Dataset(name, x_train.contiguous(), y_train, x_test.contiguous(), y_test, num_classes,
                   tuple(stats[0]), tuple(stats[1]), gray, hflip)


def _nhwc(x):
    """uint8 numpy (N, H, W, 3) -> uint8 torch (N, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)).permute(0, 3, 1, 2)


def _labels(y):
    return torch.from_numpy(np.asarray(y, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------
# npz sets: cifar10, gtsrb, tiny32, tiny64

# name -> (file, classes, (mean, std), hflip)
NPZ_SETS = {
    "cifar10": ("cifar10.npz", 10, CIFAR10_STATS, True),
    "gtsrb": ("gtsrb.npz", 43, GTSRB_STATS, False),  # signs: flipping changes their meaning
    "tiny32": ("tinyimagenet100_32.npz", 100, TINY32_STATS, True),
    "tiny64": ("tinyimagenet10_64.npz", 10, IMAGENET_STATS, True),
}


def _load_npz(name, root, seed, n_train=None, n_test=None):
    file, k, stats, hflip = NPZ_SETS[name]
    path = Path(root) / file
    if path.is_file():
        with np.load(path, allow_pickle=False) as d:
            x_train, y_train, x_test, y_test = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
        x_train, x_test = _nhwc(x_train), _nhwc(x_test)
        y_train, y_test = _labels(y_train), _labels(y_test)
    elif name == "cifar10" and (Path(root) / "cifar-10-batches-py").is_dir():
        x_train, y_train, x_test, y_test = _read_cifar_batches(Path(root) / "cifar-10-batches-py")
    else:
        alt = f" nor {Path(root) / 'cifar-10-batches-py'}/" if name == "cifar10" else ""
        raise DataMissing(f"{name}: {path}{alt} not found (set BENCH_DATA or pass root)")
    return _finish(name, x_train, y_train, x_test, y_test, k, stats, False, hflip, seed, n_train, n_test)


# torchvision's CIFAR-10 folder holds Python pickles. Unpickling can call any importable function, so
# only the few constructors that plain dicts of numpy arrays need are let through.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 spell bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def safe_pickle_load(f):
    """Loads a pickle of plain containers and numpy arrays from a binary file; refuses anything else."""
    # latin1 reads the Python 2 strings inside the original CIFAR batches, numpy arrays included
    return _RestrictedUnpickler(f, encoding="latin1").load()


def _read_cifar_batches(folder):
    def read(files):
        xs, ys = [], []
        for fname in files:
            path = folder / fname
            if not path.is_file():
                raise DataMissing(f"cifar10: {path} not found (incomplete cifar-10-batches-py)")
            with open(path, "rb") as f:
                d = safe_pickle_load(f)
            d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # stored channel-first
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    x_train, y_train = read([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = read(["test_batch"])
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------------------------------------
# idx sets: mnist, fashion

def _read_idx(path):
    """An idx file (gz or plain) as a numpy array; the header gives the element type and the shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape).copy()  # frombuffer is read-only; torch wants writable memory


def _find_idx(folder, stem):
    """folder/stem or folder/stem.gz, whichever exists (None if neither)."""
    for p in (folder / stem, folder / (stem + ".gz")):
        if p.is_file():
            return p
    return None


def _read_idx_split(folders, split):
    """(images (N, 28, 28), labels (N,)) of one split from the first folder holding both, else None."""
    for folder in folders:
        xi, yi = _find_idx(folder, f"{split}-images-idx3-ubyte"), _find_idx(folder, f"{split}-labels-idx1-ubyte")
        if xi and yi:
            return _read_idx(xi), _read_idx(yi)
    return None


def _gray_to_rgb(x):
    """uint8 numpy (N, H, W) -> uint8 torch (N, 3, H, W) with the gray value in every channel."""
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1).repeat(1, 3, 1, 1)


def _load_idx_set(name, root, seed, n_train=None, n_test=None):
    root = Path(root)
    sub = {"mnist": ("mnist", "MNIST"), "fashion": ("fashion-mnist", "FashionMNIST")}[name]
    folders = [root / sub[0], root / sub[1] / "raw", root]
    test = _read_idx_split(folders, "t10k")
    if test is None:
        where = ", ".join(str(f) for f in folders)
        raise DataMissing(f"{name}: t10k-images/labels idx files not found in {where} (set BENCH_DATA or pass root)")
    train = _read_idx_split(folders, "train")
    if train is None:
        # Only the official test split is shared: a fixed shuffle (independent of `seed`, so the held-out
        # part never changes) gives 8,000 training and 2,000 test images.
        perm = np.random.default_rng(0).permutation(len(test[1]))
        x, y = test[0][perm], test[1][perm]
        train, test = (x[:8000], y[:8000]), (x[8000:], y[8000:])
    return _finish(name, _gray_to_rgb(train[0]), _labels(train[1]), _gray_to_rgb(test[0]), _labels(test[1]),
                   10, GRAY_STATS, True, name == "fashion", seed, n_train, n_test)  # flip clothes, not digits


# ---------------------------------------------------------------------------------------------------------
# synthetic: a procedurally drawn colour task
#
# A class is one combination of three attributes of a large central object: its shape (10), its colour pair
# (5) and the texture that mixes the pair (4), hence up to 200 classes. Every image varies the object's
# position, scale, aspect and rotation, and lies on a noisy two-colour gradient with smaller distractor
# objects of random shape, colours and texture, then gets a colour cast, brightness, contrast and pixel
# noise, so that neither a pixel, a colour nor a shape alone gives the class away.

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "star", "crescent", "bars", "semidisc")
PALETTES = (  # (main colour, second colour), RGB in [0, 1]
    ((0.85, 0.15, 0.10), (0.95, 0.85, 0.20)),  # red, yellow
    ((0.15, 0.25, 0.85), (0.95, 0.95, 0.95)),  # blue, white
    ((0.15, 0.70, 0.20), (0.05, 0.05, 0.05)),  # green, black
    ((0.80, 0.15, 0.75), (0.20, 0.85, 0.85)),  # magenta, cyan
    ((0.95, 0.55, 0.10), (0.40, 0.15, 0.60)),  # orange, purple
)
TEXTURES = ("solid", "gradient", "stripes", "checker")
MAX_CLASSES = len(SHAPES) * len(PALETTES) * len(TEXTURES)

SYN = {  # the generator's tunables; lengths are in half image widths (the image spans [-1, 1])
    "scale": (0.45, 0.75),  # main object's radius
    "aspect": (0.75, 1.33),  # main object's width / height
    "shift": 0.3,  # main object's centre, uniform in [-shift, shift] on each axis
    "colour_jitter": 0.12,  # per-channel uniform jitter of the palette colours
    "clutter": 4,  # distractor objects per image, at most (each present with probability 1/2)
    "clutter_scale": (0.10, 0.28),  # their radius: always well below the main object's
    "freq": (1.5, 2.5),  # stripe and checker cycles per unit of object radius
    "bg_noise": 0.15,  # amplitude of the low-frequency background noise
    "contrast": (0.6, 1.3),
    "brightness": 0.15,  # uniform in [-b, b]
    "cast": 0.15,  # per-channel gain uniform in [1 - c, 1 + c]
    "noise": (0.01, 0.08),  # std of the pixel noise, uniform in this range per image
    "chunk": 1024,  # images drawn at once (memory: about 40 floats per pixel per image)
}


def class_attributes(c):
    """(shape, palette, texture) indices of class c; the first 10 classes all have different shapes."""
    if not 0 <= c < MAX_CLASSES:
        raise ValueError(f"synthetic supports up to {MAX_CLASSES} classes, got class {c}")
    s, k = c % len(SHAPES), c // len(SHAPES)  # k in 0..19: which colour/texture pairing of this shape
    return s, (k + s) % len(PALETTES), (k // len(PALETTES) + s) % len(TEXTURES)


def _shape_level(shape, u, v):
    """A level function of the shape in its own coordinates: inside where < 1, roughly a distance."""
    r = torch.sqrt(u * u + v * v)
    if shape == 0:  # disc
        return r
    if shape == 1:  # square
        return torch.maximum(u.abs(), v.abs()) / 0.85
    if shape == 2:  # triangle, circumradius 1: three half-planes at the inradius 0.5
        d = [u * np.cos(a) + v * np.sin(a) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        return torch.maximum(torch.maximum(d[0], d[1]), d[2]) / 0.5
    if shape == 3:  # ring: 0.55 < r < 1
        return torch.maximum(r, 1.55 - r)
    if shape == 4:  # cross of two bars 0.66 wide
        return torch.minimum(torch.maximum(u.abs() / 0.33, v.abs()), torch.maximum(v.abs() / 0.33, u.abs()))
    if shape == 5:  # diamond
        return u.abs() + v.abs()
    if shape == 6:  # five-pointed star
        return r / (0.6 + 0.4 * torch.cos(5 * torch.atan2(v, u)))
    if shape == 7:  # crescent: the disc less a shifted disc
        return torch.maximum(r, 1.8 - torch.sqrt((u - 0.45) ** 2 + v * v))
    if shape == 8:  # two parallel bars
        return torch.maximum(u.abs(), (v.abs() - 0.55).abs() / 0.25)
    if shape == 9:  # half disc
        return torch.maximum(r, 1 + v / 0.3)
    raise ValueError(f"unknown shape {shape}")


def _texture_weight(texture, u, v, freq, phase):
    """Weight (0..1) of the second palette colour over the object; u, v (B, H, W), freq, phase (B, 1, 1)."""
    if texture == 0:  # solid
        return torch.zeros_like(u)
    if texture == 1:  # gradient across the object
        return ((u + 1) / 2).clamp(0, 1)
    if texture == 2:  # stripes
        return 0.5 + 0.5 * torch.tanh(3 * torch.sin(2 * np.pi * freq * u + phase))
    if texture == 3:  # checker
        return 0.5 + 0.5 * torch.tanh(3 * torch.sin(np.pi * freq * u + phase) * torch.sin(np.pi * freq * v))
    raise ValueError(f"unknown texture {texture}")


def _uniform(gen, shape, lo, hi):
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _paint(img, grid, shapes, textures, c1, c2, centre, scale, aspect, angle, gen):
    """Alpha-blends one object per image onto img (B, 3, H, W) in place; per-image parameters are (B,...)."""
    B, size = img.shape[0], img.shape[-1]
    x = grid[0] - centre[:, 0, None, None]  # (B, H, W)
    y = grid[1] - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (x * cos + y * sin) / (scale * aspect)[:, None, None]  # object coordinates: unit = its radius
    v = (-x * sin + y * cos) / (scale / aspect)[:, None, None]
    freq = _uniform(gen, (B, 1, 1), *SYN["freq"])
    phase = _uniform(gen, (B, 1, 1), 0, 2 * np.pi)
    level, weight = torch.empty_like(u), torch.empty_like(u)
    for s in shapes.unique().tolist():
        m = shapes == s
        level[m] = _shape_level(s, u[m], v[m])
    for t in textures.unique().tolist():
        m = textures == t
        weight[m] = _texture_weight(t, u[m], v[m], freq[m], phase[m])
    # soft edge about one pixel wide: level units per pixel = 2 / (size * scale)
    alpha = ((1 - level) * (scale * size / 2)[:, None, None] + 0.5).clamp(0, 1).unsqueeze(1)  # (B, 1, H, W)
    w = weight.unsqueeze(1)
    colour = c1[:, :, None, None] * (1 - w) + c2[:, :, None, None] * w  # (B, 3, H, W)
    img.mul_(1 - alpha).add_(alpha * colour)


def _draw(labels, size, gen):
    """uint8 (B, 3, size, size) images of the given classes."""
    B = len(labels)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"))  # (2, H, W): x, y

    # background: a gradient between two random colours along a random direction, plus smooth noise
    ca, cb = torch.rand(B, 3, generator=gen), torch.rand(B, 3, generator=gen)
    phi = _uniform(gen, (B, 1, 1), 0, 2 * np.pi)
    t = ((grid[0] * torch.cos(phi) + grid[1] * torch.sin(phi)) / 2 + 0.5).clamp(0, 1).unsqueeze(1)  # (B, 1, H, W)
    img = ca[:, :, None, None] * (1 - t) + cb[:, :, None, None] * t
    blobs = torch.randn(B, 3, 4, 4, generator=gen) * SYN["bg_noise"]
    img += torch.nn.functional.interpolate(blobs, size=(size, size), mode="bilinear", align_corners=False)

    # distractors: small objects of any shape, colours and texture, behind the main object
    for _ in range(SYN["clutter"]):
        on = torch.rand(B, generator=gen) < 0.5
        n = int(on.sum())
        if n == 0:
            continue
        part = img[on]
        _paint(part, grid,
               torch.randint(len(SHAPES), (n,), generator=gen), torch.randint(len(TEXTURES), (n,), generator=gen),
               torch.rand(n, 3, generator=gen), torch.rand(n, 3, generator=gen),
               _uniform(gen, (n, 2), -0.9, 0.9), _uniform(gen, (n,), *SYN["clutter_scale"]),
               _uniform(gen, (n,), 0.75, 1.33), _uniform(gen, (n,), 0, 2 * np.pi), gen)
        img[on] = part

    # the main object, whose attributes are the class
    table = torch.tensor([class_attributes(c) for c in range(int(labels.max()) + 1)])  # (K, 3)
    attrs = table[labels]  # (B, 3): shape, palette, texture
    palettes = torch.tensor(PALETTES)  # (P, 2, 3)
    jitter = SYN["colour_jitter"]
    c1 = (palettes[attrs[:, 1], 0] + _uniform(gen, (B, 3), -jitter, jitter)).clamp(0, 1)
    c2 = (palettes[attrs[:, 1], 1] + _uniform(gen, (B, 3), -jitter, jitter)).clamp(0, 1)
    _paint(img, grid, attrs[:, 0], attrs[:, 2], c1, c2,
           _uniform(gen, (B, 2), -SYN["shift"], SYN["shift"]), _uniform(gen, (B,), *SYN["scale"]),
           torch.exp(_uniform(gen, (B,), *np.log(SYN["aspect"]))), _uniform(gen, (B,), 0, 2 * np.pi), gen)

    # camera: colour cast, contrast, brightness, sensor noise
    cast = _uniform(gen, (B, 3, 1, 1), 1 - SYN["cast"], 1 + SYN["cast"])
    contrast = _uniform(gen, (B, 1, 1, 1), *SYN["contrast"])
    bright = _uniform(gen, (B, 1, 1, 1), -SYN["brightness"], SYN["brightness"])
    img = ((img * cast - 0.5) * contrast + 0.5 + bright)
    img += torch.randn(img.shape, generator=gen) * _uniform(gen, (B, 1, 1, 1), *SYN["noise"])
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _synthetic_split(num_classes, per_class, size, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat(per_class)  # classes interleaved, so a chunk holds all of them
    x = torch.cat([_draw(labels[i:i + SYN["chunk"]], size, gen) for i in range(0, len(labels), SYN["chunk"])])
    return x, labels


def _load_synthetic(seed, num_classes=10, size=32, n_train=500, n_test=100):
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"synthetic: num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    if size < 8 or n_train is None or n_train < 1 or n_test is None or n_test < 1:
        raise ValueError(f"synthetic: need size >= 8 and n_train, n_test >= 1 per class, "
                         f"got size={size}, n_train={n_train}, n_test={n_test}")
    # separate streams, so the test images do not depend on n_train
    x_train, y_train = _synthetic_split(num_classes, n_train, size, 2 * seed)
    x_test, y_test = _synthetic_split(num_classes, n_test, size, 2 * seed + 1)
    x = x_train.float() / 255
    mean = tuple(round(v, 4) for v in x.mean((0, 2, 3)).tolist())
    std = tuple(round(v, 4) for v in x.std((0, 2, 3)).tolist())
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes, mean, std, False, True)


# ---------------------------------------------------------------------------------------------------------
# entry points

def names() -> list:
    """Every name load() accepts."""
    return ["synthetic", *NPZ_SETS, "mnist", "fashion"]


def load(name: str, root: str | None = None, seed: int = 0, **kw) -> Dataset:
    """The data set `name`, read from `root` (default DATA_ROOT, for fashion the Debian package's folder).

    kw: n_train, n_test (per-class caps, drawn with `seed`); synthetic also takes num_classes and size.
    """
    if name not in names():
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(names())}")
    allowed = {"n_train", "n_test"} | ({"num_classes", "size"} if name == "synthetic" else set())
    unknown = set(kw) - allowed
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if name == "synthetic":
        return _load_synthetic(seed, **kw)
    if name in NPZ_SETS:
        return _load_npz(name, root or DATA_ROOT, seed, **kw)
    if name == "fashion":
        kw.setdefault("n_train", 1000)  # 10,000 of the 60,000 training images: enough for a CPU zoo
        return _load_idx_set(name, root or FASHION_ROOT, seed, **kw)
    return _load_idx_set(name, root or DATA_ROOT, seed, **kw)
