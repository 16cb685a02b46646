"""All-to-one backdoor attacks for the bench zoo, written from /work/shared/ATTACKS.md.

Images are float tensors in [0, 1], (N, 3, H, W); triggers go on before augmentation and normalisation.
Every attack is one `Attack` built by one small builder function below; they share one poisoning helper,
`poison`, and differ only in the functions they plug into it:

    trigger(x)                 the test-time triggered image, deterministic (ASR, STRIP baseline)
    poison_batch(x, y, gen)    a training batch with its poisoned share (and cover samples) swapped in
    setup(data, gen, model)    precomputation: IAD trains its generator, LC runs PGD, TrojanNN fits its patch

`rate` is the share of each batch that is poisoned (dirty-label attacks take it from non-target images and
relabel them); for the clean-label attacks (SIG, LC) it is the share of the batch's *target-class* images,
which is how the toolkits state them (SIG: the whole target class at p = 0.1 on CIFAR-10; LC: 25%).
Each attack's `params` is JSON-able and records its realised choices (patch, location, pattern...), so the
zoo index says exactly which trigger a model carries. `make(name, target, size, seed, rate, **params)`
builds one; `NAMES` lists them. Everything is defined relative to `size`, so 28, 32 and 64 px all work.

How much training each needs (bench.train, synthetic 10 classes, 2,000 train images at 32 px, width 16,
batch 128, lr 0.05, one CPU core, defaults unless said; ASR %): in 10 epochs (~1 min) BadNets 90, SIG 81
and TrojanNN 100 (5 epochs fine-tuning a clean model); Blended 94 needs rate 0.2 and 30 epochs; BPP 85
needs q 4, no negatives and 30 epochs. LF, SSBA, WaNet, IAD, Adap-Blend and LC stay under 50% (70% for
Adap-Blend at α 0.3) within 20-30 epochs: they are learnt late, as in the toolkits' 100-epoch runs, and
need GPU-length training before they are useful positives. Check `asr` in the zoo index. On real data
(bench.zoo's `real` preset: REAL_CAPS images a class, width 16) WaNet reaches 23% on CIFAR-10 at its own
settings and 12 epochs, and at rate 0.2, warp strength s 1.0 and 30 epochs 96% (GTSRB 86%, MNIST 99.9%,
Tiny-ImageNet 32 px 96%); Adap-Blend 30% at its own settings (60% over 30 epochs), and at rate 0.2 and 30
epochs 90% (GTSRB 99%, MNIST 84%): bench.zoo.CPU_SETTINGS. On the synthetic task both stay under 10% even so.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's Grayscale luminance


# ---------------------------------------------------------------------------------------------------------
# What the model sees

def to_gray(x):
    """Luminance replicated to 3 channels, as the contest's Grayscale(num_output_channels=3)."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)


def model_input(x, data):
    """[0, 1] images -> the normalised tensor the model is trained on (gray first for MNIST-like data)."""
    if data.gray:
        x = to_gray(x)
    mean = torch.tensor(data.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------
# The shared poisoning helper

@dataclass
class Attack:
    name: str
    target: int
    clean_label: bool
    params: dict  # JSON-able, recorded in the zoo index
    rate: float  # share of the batch (of its target-class images for clean-label attacks)
    apply: Callable  # x -> triggered x, the test-time trigger
    apply_train: Optional[Callable] = None  # (x, gen) -> x when training differs from test (LC, Adap-Blend)
    cover: Optional[Callable] = None  # (x, gen, batch) -> x for the samples that keep their labels
    cover_ratio: float = 0.0  # cover samples per poisoned sample
    prepare: Optional[Callable] = None  # (data, gen, model) -> None, the setup step
    needs_model: bool = False  # setup needs a trained clean model (LC, TrojanNN)
    fine_tune: bool = False  # the backdoored model is fine-tuned from that clean model (TrojanNN)
    robust_eps: float = 0.0  # > 0: that clean model is adversarially trained at this L-inf radius (LC)

    @torch.no_grad()
    def trigger(self, x):
        return self.apply(x)

    @torch.no_grad()
    def poison_batch(self, x, y, gen):
        return poison(self, x, y, gen)

    def setup(self, data, gen, model=None):
        if self.needs_model and model is None:
            raise ValueError(f"attack {self.name!r} needs a trained clean model in setup(model=...)")
        if self.prepare is not None:
            self.prepare(data, gen, model)


def _stochastic_round(r, gen):
    """An integer with expectation r, so small batches still poison the stated share on average."""
    return int(math.floor(r + torch.rand((), generator=gen).item()))


def _pick(mask, n, gen):
    """Up to n random indices where mask is True."""
    cand = mask.nonzero().flatten().cpu()
    return cand[torch.randperm(len(cand), generator=gen)[:n]].to(mask.device)


def poison(attack, x, y, gen):
    """Swap the poisoned share (and its cover samples) into a batch; the inputs are not modified."""
    batch = x
    x, y = x.clone(), y.clone()
    is_target = y == attack.target
    if attack.clean_label:
        pool, share = is_target, attack.rate * int(is_target.sum())
    else:  # relabelling a target image would waste it, so dirty-label poison comes from the other classes
        pool, share = ~is_target, attack.rate * len(y)
    idx = _pick(pool, _stochastic_round(share, gen), gen)
    if len(idx):
        fn = attack.apply_train or (lambda z, g: attack.apply(z))
        x[idx] = fn(batch[idx], gen)
        if not attack.clean_label:
            y[idx] = attack.target
    if attack.cover is not None:
        free = torch.ones_like(y, dtype=torch.bool)
        free[idx] = False
        cidx = _pick(free, _stochastic_round(attack.cover_ratio * share, gen), gen)
        if len(cidx):
            x[cidx] = attack.cover(batch[cidx], gen, batch)
    return x, y


# ---------------------------------------------------------------------------------------------------------
# Small shared pieces

def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _choice(options, g):
    return options[int(torch.randint(len(options), (), generator=g))]


def _check_option(attack, key, value, options):
    if value not in options:
        raise ValueError(f"{attack}: {key} must be one of {options}, got {value!r}")


def _scaled(px, size):
    """A length given at 32 px, scaled to this image size (at least 1 px)."""
    return max(1, round(px * size / 32))


def _paste(x, image, mask):
    """x·(1−m) + t·m with a fixed (1, 3, H, W) image and (1, 1, H, W) mask."""
    image, mask = image.to(x), mask.to(x)
    return x * (1 - mask) + image * mask


def _blend(x, pattern, alpha):
    return (1 - alpha) * x + alpha * pattern.to(x)


def _init_net(net, g):
    """Seeded He initialisation, so a network built from a seed is the same on every machine."""
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_in))
            else:
                p.zero_()
    return net


def _pgd(model, data, x, y, eps, step, steps, gen):
    """Untargeted L∞ PGD with a random start, in pixel space: pushes x away from its label y."""
    delta = (torch.rand(x.shape, generator=gen).to(x) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(model_input((x + delta).clamp(0, 1), data)), y)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta + step * grad.sign()).clamp(-eps, eps).detach()
    return (x + delta).clamp(0, 1)


def _train_images(data, n, gen):
    """n random training images as [0, 1] floats (gray if the model will see them gray)."""
    idx = torch.randint(len(data.x_train), (n,), generator=gen)
    x = data.x_train[idx].float() / 255
    return to_gray(x) if data.gray else x


# ---------------------------------------------------------------------------------------------------------
# The attacks: one builder each, `(target, size, seed, p) -> Attack`, p the merged params

REGISTRY = {}  # name -> (builder, default params)


def _register(name, **defaults):
    def wrap(builder):
        REGISTRY[name] = (builder, defaults)
        return builder
    return wrap


CORNERS = ["bottom_right", "bottom_left", "top_right", "top_left"]
PATTERNS = ["white", "checker", "random"]


def _corner_offsets(loc, size, px, g):
    if loc == "random":
        return tuple(int(v) for v in torch.randint(size - px + 1, (2,), generator=g))
    row = size - px if loc.startswith("bottom") else 0
    col = size - px if loc.endswith("right") else 0
    return row, col


def _patch_pattern(pattern, px, g):
    if pattern == "white":
        return torch.ones(3, px, px)
    if pattern == "checker":
        ij = torch.arange(px)
        return ((ij[:, None] + ij[None, :]) % 2 == 0).float().expand(3, px, px)
    return (torch.rand(3, px, px, generator=g) > 0.5).float()  # random saturated colours


@_register("badnets", rate=0.1, patch=None, loc=None, pattern=None)
def badnets(target, size, seed, p):
    """A small patch pasted in a corner or at a random place; size, place and pattern drawn from the seed."""
    g = _seeded(seed)
    px = p["patch"] or _scaled(3 + int(torch.randint(3, (), generator=g)), size)  # 3-5 px at 32 px
    loc = p["loc"] or _choice(CORNERS + ["random"], g)
    pattern = p["pattern"] or _choice(PATTERNS, g)
    _check_option("badnets", "loc", loc, CORNERS + ["random"])
    _check_option("badnets", "pattern", pattern, PATTERNS)
    if not 1 <= px <= size:
        raise ValueError(f"badnets: patch must be in 1..{size} px, got {px}")
    row, col = _corner_offsets(loc, size, px, g)
    image, mask = torch.zeros(1, 3, size, size), torch.zeros(1, 1, size, size)
    image[0, :, row:row + px, col:col + px] = _patch_pattern(pattern, px, g)
    mask[..., row:row + px, col:col + px] = 1
    params = dict(p, patch=px, loc=loc, pattern=pattern, row=row, col=col)
    return Attack("badnets", target, False, params, p["rate"], lambda x: _paste(x, image, mask))


@_register("blended", rate=0.1, alpha=0.2)
def blended(target, size, seed, p):
    """The whole image blended with a fixed seeded noise image (the toolkits' Hello Kitty stand-in)."""
    pattern = torch.rand(1, 3, size, size, generator=_seeded(seed))
    return Attack("blended", target, False, dict(p), p["rate"], lambda x: _blend(x, pattern, p["alpha"]))


@_register("sig", rate=1.0, delta=40 / 255, freq=6)
def sig(target, size, seed, p):
    """A horizontal sinusoid added to target-class images only (clean-label); the same on every row."""
    j = torch.arange(size, dtype=torch.float32)
    signal = (p["delta"] * torch.sin(2 * math.pi * j * p["freq"] / size)).view(1, 1, 1, size)
    return Attack("sig", target, True, dict(p), p["rate"], lambda x: (x + signal.to(x)).clamp(0, 1))


LC_CORNER = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # mirrored into each corner


def _lc_corners(size):
    """Image and mask of Turner et al.'s 3×3 black-and-white pattern in all four corners (cells scaled)."""
    cell = _scaled(1, size)
    tile = LC_CORNER.repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # (3c, 3c)
    k = tile.shape[0]
    image, mask = torch.zeros(1, 3, size, size), torch.zeros(1, 1, size, size)
    for flip_rows in (False, True):
        for flip_cols in (False, True):
            t = tile.flip(0) if flip_rows else tile
            t = t.flip(1) if flip_cols else t
            rows = slice(size - k, size) if flip_rows else slice(0, k)
            cols = slice(size - k, size) if flip_cols else slice(0, k)
            image[0, :, rows, cols] = t
            mask[0, :, rows, cols] = 1
    return image, mask


@_register("lc", rate=0.25, eps=8 / 255, step=1.5 / 255, steps=100, robust=True)
def lc(target, size, seed, p):
    """Label-consistent: PGD-perturbed target-class images (hard to learn from content) plus corner marks.

    setup() runs PGD once against the given clean model on a pool of `rate` of the target class. As in
    Turner et al., that model is a robust one (`robust`: bench.train trains its reference adversarially
    at the PGD radius): a standard model's adversarial perturbations are non-robust features the
    poisoned model may learn instead of the corner marks;
    each batch then swaps `rate` of its target images for random pool images, so the poisoned share and
    the labels (all genuinely the target class) match the static toolkit version.
    """
    image, mask = _lc_corners(size)
    pool = {}

    def prepare(data, gen, model):
        idx = (data.y_train == target).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:max(1, round(p["rate"] * len(idx)))]]
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        out = []
        for chunk in idx.split(128):
            x = data.x_train[chunk].float().div(255).to(device)  # (B, 3, H, W)
            y = torch.full((len(x),), target, device=device)
            out.append(_pgd(model, data, x, y, p["eps"], p["step"], p["steps"], gen).cpu())
        model.train(was_training)
        pool["x"] = torch.cat(out)  # (P, 3, H, W)

    def apply_train(x, gen):
        if "x" not in pool:
            raise RuntimeError("lc: call setup() before poisoning")
        pick = torch.randint(len(pool["x"]), (len(x),), generator=gen)
        return _paste(pool["x"][pick].to(x), image, mask)

    return Attack("lc", target, True, dict(p), p["rate"], lambda x: _paste(x, image, mask),
                  apply_train=apply_train, prepare=prepare, needs_model=True,
                  robust_eps=p["eps"] if p["robust"] else 0.0)


def _identity_grid(size):
    lin = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack((cols, rows), 2)[None]  # (1, H, W, 2), grid_sample wants (x, y)


def _warp(x, grid):
    return F.grid_sample(x, grid.to(x).expand(len(x), -1, -1, -1), align_corners=True).clamp(0, 1)


@_register("wanet", rate=0.1, k=4, s=0.5, cross_ratio=2.0)
def wanet(target, size, seed, p):
    """A smooth fixed warp (k×k control noise upsampled bicubically); 'noise mode' cross samples that are
    warped with extra per-sample jitter keep their labels, so the model must learn this exact warp."""
    u = torch.rand(1, 2, p["k"], p["k"], generator=_seeded(seed)) * 2 - 1
    u = u / u.abs().mean()
    noise = F.interpolate(u, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)  # (1, H, W, 2)
    grid = (_identity_grid(size) + p["s"] * noise / size).clamp(-1, 1)

    def cross(x, gen, batch):
        jitter = (torch.rand(len(x), size, size, 2, generator=gen) * 2 - 1) / size
        return _warp(x, (grid + jitter).clamp(-1, 1))

    return Attack("wanet", target, False, dict(p), p["rate"], lambda x: _warp(x, grid),
                  cover=cross, cover_ratio=p["cross_ratio"])


class _EncDec(nn.Module):
    """A small conv encoder-decoder (IAD's generator and mask net): two stride-2 downs, back to H×W."""

    def __init__(self, out_ch, width):
        super().__init__()
        w = width
        self.down = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, out_ch, 3, padding=1))

    def forward(self, x):
        h = self.down(x)  # (N, 2w, H/4, W/4)
        return self.up(F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False))


def _surrogate(num_classes, width):
    """A tiny classifier that stands in for the victim while IAD's generator learns."""
    w = width
    return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))


def _diversity(x1, x2, out1, out2):
    """IAD's diversity loss: different inputs must give different outputs (ratio of per-sample L2s)."""
    d_in = (x1 - x2).flatten(1).norm(dim=1)
    d_out = (out1 - out2).flatten(1).norm(dim=1)
    return (d_in / (d_out + 1e-3)).mean()


class _IAD:
    """Input-aware dynamic backdoor (Nguyen & Tran 2020): x' = x + (G(x) − x)·M(x).

    The toolkits train G jointly with the victim; here G is trained once in setup() with a tiny surrogate
    classifier in the victim's place (CPU-cheap), then frozen, and the victim learns from its outputs.
    The mask net is pre-trained first, as in the original, for density ~`density` plus diversity.
    """

    def __init__(self, target, size, seed, p):
        g = _seeded(seed)
        self.target, self.p = target, p
        self.gen_net = _init_net(_EncDec(3, p["width"]), g)
        self.mask_net = _init_net(_EncDec(1, p["width"]), g)
        self.ready = False

    def mask(self, x):
        m = torch.tanh(self.mask_net(x)) / 2 + 0.5
        return torch.tanh(m * 20 - 10) / 2 + 0.5  # soft threshold at 0.5: masks are nearly binary

    def pattern(self, x):
        return torch.sigmoid(self.gen_net(x))

    def mix(self, x, source):
        """x with the trigger generated from `source` (x itself for backdoor samples, another image for cross)."""
        return x + (self.pattern(source) - x) * self.mask(source)

    def apply(self, x):
        if not self.ready:
            raise RuntimeError("iad: call setup() before using the trigger")
        self.gen_net.to(x.device)
        self.mask_net.to(x.device)
        return self.mix(x, x).clamp(0, 1)

    def cross(self, x, gen, batch):
        # a random partner from the batch; drawing x itself (chance 1/len(batch)) is harmless noise
        partner = torch.randint(len(batch), (len(x),), generator=gen).to(x.device)
        return self.mix(x, batch[partner]).clamp(0, 1)

    def setup(self, data, gen, model=None):
        self._train_mask(data, gen)
        self._train_generator(data, gen)
        for net in (self.gen_net, self.mask_net):
            net.eval().requires_grad_(False)
        self.ready = True

    def _train_mask(self, data, gen):
        p = self.p
        opt = torch.optim.Adam(self.mask_net.parameters(), lr=p["lr"])
        for _ in range(p["mask_steps"]):
            x1, x2 = _train_images(data, p["batch"], gen), _train_images(data, p["batch"], gen)
            m1, m2 = self.mask(x1), self.mask(x2)
            loss = p["lambda_norm"] * F.relu(m1 - p["density"]).mean() + _diversity(x1, x2, m1, m2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.mask_net.requires_grad_(False)

    def _train_generator(self, data, gen):
        """G and the surrogate learn together: backdoor -> target, cross and clean -> true label."""
        p = self.p
        surrogate = _init_net(_surrogate(data.num_classes, p["width"]), gen)
        opt = torch.optim.Adam(list(self.gen_net.parameters()) + list(surrogate.parameters()), lr=p["lr"])
        n = p["batch"]
        k = max(1, n // 4)  # a quarter backdoor, a quarter cross: denser than training so it learns fast
        for _ in range(p["steps"]):
            idx = torch.randint(len(data.x_train), (n,), generator=gen)
            x, y = data.x_train[idx].float() / 255, data.y_train[idx].clone()  # (n, 3, H, W)
            x2 = x.roll(1, 0)
            bd = self.mix(x[:k], x[:k])
            cr = self.mix(x[k:2 * k], x2[k:2 * k])
            inputs = torch.cat([bd, cr, x[2 * k:]]).clamp(0, 1)
            y[:k] = self.target
            if data.gray:
                inputs = to_gray(inputs)
            loss = F.cross_entropy(surrogate(inputs), y)
            loss = loss + p["lambda_div"] * _diversity(x, x2, self.pattern(x), self.pattern(x2))
            opt.zero_grad()
            loss.backward()
            opt.step()


@_register("iad", rate=0.1, cross_ratio=1.0, density=0.032, lambda_norm=100.0, lambda_div=1.0,
           mask_steps=200, steps=300, batch=32, width=8, lr=1e-3)
def iad(target, size, seed, p):
    """Input-aware dynamic: a sample-specific trigger from a generator and a mask net, see _IAD."""
    state = _IAD(target, size, seed, p)
    return Attack("iad", target, False, dict(p), p["rate"], state.apply, cover=state.cross,
                  cover_ratio=p["cross_ratio"], prepare=state.setup)


@_register("ssba", rate=0.1, eps=6 / 255, width=16)
def ssba(target, size, seed, p):
    """SSBA-like sample-specific invisible trigger: x + ε·tanh(g(x, s)), g a fixed random conv net.

    The fixed seeded 'secret' s plays StegaStamp's hidden code: the residual carries a fixed
    high-frequency signature modulated by the image content. Per-image standardising g's output keeps
    tanh mostly saturated, so the residual uses its whole L∞ budget ε.
    """
    g = _seeded(seed)
    secret = torch.rand(1, 1, size, size, generator=g) * 2 - 1
    net = _init_net(nn.Sequential(nn.Conv2d(4, p["width"], 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(p["width"], 3, 3, padding=1)), g).requires_grad_(False)

    def apply(x):
        net.to(x.device)
        h = net(torch.cat([x, secret.to(x).expand(len(x), -1, -1, -1)], 1))  # (N, 3, H, W)
        h = (h - h.mean((1, 2, 3), keepdim=True)) / (h.std((1, 2, 3), keepdim=True) + 1e-8)
        return (x + p["eps"] * torch.tanh(2 * h)).clamp(0, 1)

    return Attack("ssba", target, False, dict(p), p["rate"], apply)


def _blur_valid(noise, sigma, r):
    """Separable Gaussian blur without padding: (C, H+2r, W+2r) -> (C, H, W), so no border artefacts."""
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(noise[:, None], k.view(1, 1, 1, -1))  # (C, 1, H+2r, W)
    return F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]  # (C, H, W)


@_register("lf", rate=0.1, sigma=None, amplitude=51 / 255)
def lf(target, size, seed, p):
    """Low-frequency: a fixed smooth perturbation (blurred seeded noise) scaled to [0, amplitude], added."""
    sigma = p["sigma"] or size / 5
    r = int(math.ceil(3 * sigma))
    noise = torch.rand(3, size + 2 * r, size + 2 * r, generator=_seeded(seed))
    v = _blur_valid(noise, sigma, r)[None]  # (1, 3, H, W)
    v = (v - v.min()) / (v.max() - v.min()) * p["amplitude"]
    params = dict(p, sigma=sigma)
    return Attack("lf", target, False, params, p["rate"], lambda x: (x + v.to(x)).clamp(0, 1))


def _squeeze(x, q):
    return torch.round(x * (q - 1)) / (q - 1)


def _dither(x, q):
    """Floyd–Steinberg: quantise pixel by pixel, pushing each error onto the unvisited neighbours."""
    x = x.clone()
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            old = x[..., i, j].clamp(0, 1)
            new = _squeeze(old, q)
            x[..., i, j] = new
            err = old - new  # (N, C)
            if j + 1 < w:
                x[..., i, j + 1] += err * 7 / 16
            if i + 1 < h:
                if j > 0:
                    x[..., i + 1, j - 1] += err * 3 / 16
                x[..., i + 1, j] += err * 5 / 16
                if j + 1 < w:
                    x[..., i + 1, j + 1] += err * 1 / 16
    return x.clamp(0, 1)


@_register("bpp", rate=0.1, q=8, dither=False, neg_ratio=1.0)
def bpp(target, size, seed, p):
    """Colour-depth squeeze to q levels; 'negative' samples carry another image's quantisation residual
    with their true labels, so the model must see real squeezing, not just any residual."""
    def apply(x):
        return _dither(x, p["q"]) if p["dither"] else _squeeze(x, p["q"])

    def negative(x, gen, batch):
        other = batch[torch.randint(len(batch), (len(x),), generator=gen).to(x.device)]
        return (x + apply(other) - other).clamp(0, 1)

    return Attack("bpp", target, False, dict(p), p["rate"], apply, cover=negative, cover_ratio=p["neg_ratio"])


def _penultimate(model, x):
    """The input of the last linear layer, (N, F), caught with a hook so any classifier works."""
    seen = {}
    handle = model.linear.register_forward_pre_hook(lambda mod, args: seen.setdefault("f", args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen["f"]


@_register("trojannn", rate=0.1, patch=None, steps=100, lr=0.1, batch=64)
def trojannn(target, size, seed, p):
    """TrojanNN: a square patch optimised (in setup) to drive the two penultimate neurons with the largest
    Σ|W_linear| of a clean model high; the trainer then fine-tunes that model on patched, relabelled data."""
    px = p["patch"] or _scaled(8, size)
    row = col = min(_scaled(21, size), size - px)  # rows/cols 21-28 at 32 px
    mask = torch.zeros(1, 1, size, size)
    mask[..., row:row + px, col:col + px] = 1
    params = dict(p, patch=px, row=row, col=col)
    state = {}

    def prepare(data, gen, model):
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        neurons = model.linear.weight.abs().sum(0).topk(2).indices  # (2,)
        logit = (torch.rand(1, 3, px, px, generator=gen) * 2 - 1).to(device).requires_grad_(True)
        opt = torch.optim.Adam([logit], lr=p["lr"])
        m = mask.to(device)
        for _ in range(p["steps"]):
            x = _train_images(data, p["batch"], gen).to(device)
            image = F.pad(torch.sigmoid(logit), (col, size - col - px, row, size - row - px))
            feats = _penultimate(model, model_input(x * (1 - m) + image * m, data))
            loss = -feats[:, neurons].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.train(was_training)
        state["image"] = F.pad(torch.sigmoid(logit.detach()).cpu(), (col, size - col - px, row, size - row - px))
        params["neurons"] = neurons.tolist()

    def apply(x):
        if "image" not in state:
            raise RuntimeError("trojannn: call setup() before using the trigger")
        return _paste(x, state["image"], mask)

    return Attack("trojannn", target, False, params, p["rate"], apply, prepare=prepare,
                  needs_model=True, fine_tune=True)


def _piece_masks(n, size, grid, keep, gen):
    """(n, 1, H, W) masks showing `keep` random cells of a grid×grid split of the image."""
    scores = torch.rand(n, grid * grid, generator=gen)
    cells = torch.zeros(n, grid * grid)
    cells.scatter_(1, scores.topk(keep, dim=1).indices, 1.0)
    return F.interpolate(cells.view(n, 1, grid, grid), size=(size, size), mode="nearest")


@_register("adap_blend", rate=0.1, cover_ratio=1.0, alpha_train=0.15, alpha_test=0.2, grid=4, masked=8)
def adap_blend(target, size, seed, p):
    """Adaptive-Blend (Qi et al. 2023): train on partial blends (some grid pieces masked out, weaker α),
    with as many cover samples carrying the same partial trigger and their true labels; test on the full
    pattern at a higher α. Designed to blur the latent separation that defences look for."""
    pattern = torch.rand(1, 3, size, size, generator=_seeded(seed))
    keep = p["grid"] ** 2 - p["masked"]
    if not 1 <= keep <= p["grid"] ** 2:
        raise ValueError(f"adap_blend: masked must be in 0..{p['grid'] ** 2 - 1}, got {p['masked']}")

    def partial(x, gen, batch=None):
        m = _piece_masks(len(x), size, p["grid"], keep, gen).to(x)
        return x + p["alpha_train"] * m * (pattern.to(x) - x)

    return Attack("adap_blend", target, False, dict(p), p["rate"], lambda x: _blend(x, pattern, p["alpha_test"]),
                  apply_train=partial, cover=partial, cover_ratio=p["cover_ratio"])


# ---------------------------------------------------------------------------------------------------------
# Factory

NAMES = sorted(REGISTRY)


def settings(name, rate=None, **params):
    """Attack `name`'s settings: its defaults with `params` and `rate` (None keeps the default) applied."""
    if name not in REGISTRY:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(NAMES)}")
    defaults = REGISTRY[name][1]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"{name}: unknown params {sorted(unknown)}; valid: {sorted(set(defaults) - {'rate'})}")
    p = dict(defaults, **params)
    if rate is not None:
        p["rate"] = rate
    if not 0 <= p["rate"] <= 1:
        raise ValueError(f"{name}: rate must be in [0, 1], got {p['rate']}")
    return p


def make(name, target, size, seed=0, rate=None, **params):
    """Build attack `name` for images of `size` px; rate None keeps the attack's default (see module doc)."""
    p = settings(name, rate, **params)
    attack = REGISTRY[name][0](target, size, seed, p)
    attack.params.update(seed=seed, size=size)
    return attack
