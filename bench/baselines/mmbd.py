"""MM-BD (Wang et al., IEEE S&P 2024): maximum-margin statistic in input space, a Gamma null, data-free.

Per class t: 30 random images, uniform in the valid pixel range, are optimised to maximise the margin
logit_t - max_{k!=t} logit_k (Adam, up to 300 steps, clamped to the valid range after every step, early
stop when the summed loss changes by less than 1e-5 of itself). The class statistic is the largest final
margin over the 30 starts (HYP['reduce'] = 'mean' averages them instead). An all-to-one backdoor is a
shortcut to its target, so that class reaches an abnormally large margin.

Null: a Gamma fitted by maximum likelihood to the K-1 statistics other than the largest, with loc fixed
(0, or just below the smallest value when some statistic is not positive, see gamma_null); the
three-parameter fit of the original (free loc) is unstable on 9 points. p = 1 - F(max)^K; backdoored iff
p < 0.05.

Differences from the published code (kept small on purpose): the original used plain SGD (lr 0.01,
the optimiser rebuilt every step) on [0, 1] inputs clamped inside the forward pass; here Adam works on the
pixel values in [0, 1] (the model sees (u - mean) / std, the transform's Normalize), so the step size
does not depend on the scale of the logits, and the clamp is a projection after each step.

Uses no clean images: the folder is read only to learn the input size.
Interface: evidence() returns verdict (0 backdoored, 1 clean), p_value, statistic (the largest class
margin: higher = more suspect), target, per_class (K margins), seconds, and the null's parameters.
"""
import math
import time

import torch

import solution
from bench.samples import frozen_copy, load_images, normalize_of

HYP = {
    'starts': 30,          # random images optimised per class
    'steps': 300,          # Adam steps per class at most
    'lr': 0.01,            # Adam learning rate, in pixel units (the valid range is [0, 1])
    'tol': 1e-5,           # stop when |loss change| / |previous loss| falls below this
    'reduce': 'max',       # class statistic over the starts' final margins: 'max' (the original) or 'mean'
    'newton_iters': 50,    # Newton iterations of the Gamma shape MLE at most
    'p_threshold': 0.05,   # backdoored iff p < this
    'seed': 0,             # seeds the local generator of the random starts
}

# -----------------------------------------------------------------------------
# The Gamma null


def gamma_fit(x):
    """Maximum-likelihood (shape, scale) of a Gamma with loc 0 for positive samples x.

    The shape a solves log(a) - digamma(a) = log(mean x) - mean(log x) =: s; Newton from Minka's
    closed-form start, which is within 1.5% of the root. The left side is convex and decreasing, so
    Newton from the left never overshoots; a guard halves steps that would from the right.
    Equal samples (s = 0) give shape inf and scale 0: a point mass at the mean."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if (x <= 0).any():
        raise ValueError('gamma_fit needs positive samples; shift them first (see gamma_null)')
    mean = x.mean()
    s = (mean.log() - x.log().mean()).item()
    if s < 1e-12:
        return math.inf, 0.0
    a = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(HYP['newton_iters']):
        at = torch.tensor(a, dtype=torch.float64)
        f = (at.log() - torch.digamma(at)).item() - s
        fp = 1 / a - torch.polygamma(1, at).item()
        new = max(a - f / fp, a / 2)
        if abs(new - a) <= 1e-12 * a:
            a = new
            break
        a = new
    return a, mean.item() / a


def gamma_null(rest):
    """(shape, loc, scale) of the null fitted to the non-maximal statistics `rest`.

    Margins are naturally positive, so loc is 0. If some statistic is not positive, the sample is
    shifted to start just below its minimum: loc = min - (mean - min) / n, the bias-corrected lower
    end of a shifted exponential (its minimum exceeds loc by scale / n on average)."""
    x = torch.as_tensor(rest, dtype=torch.float64)
    loc = 0.0
    if x.min() <= 0:
        spread = (x.mean() - x.min()).item()
        loc = x.min().item() - (spread / len(x) if spread > 0 else 1.0)
    shape, scale = gamma_fit(x - loc)
    return shape, loc, scale


def max_p_value(stats):
    """p of the largest of K statistics under the Gamma fitted to the other K-1: 1 - F(max)^K."""
    s = torch.as_tensor(stats, dtype=torch.float64)
    k = len(s)
    if k < 3:
        return 1.0, (math.nan, math.nan, math.nan)  # one null point: no fit (called clean, as solution.py)
    top = s.argmax()
    rest = torch.cat([s[:top], s[top + 1:]])
    shape, loc, scale = gamma_null(rest)
    if math.isinf(shape):  # equal null values, a point mass: the max is an outlier iff it exceeds them
        cdf = torch.tensor(float(s[top] > rest.max()), dtype=torch.float64)
    else:
        cdf = torch.special.gammainc(torch.tensor(shape, dtype=torch.float64), (s[top] - loc).clamp(min=0) / scale)
    p = -torch.expm1(k * torch.log(cdf))  # 1 - F^K without losing tiny p to rounding
    return abs(float(p)), (shape, loc, scale)  # abs: expm1(0) gives -0.0

# -----------------------------------------------------------------------------
# The per-class statistic


def class_statistic(net, t, shape, mean, std, gen):
    """Largest (or mean) final margin of class t over HYP['starts'] random inputs of `shape` (3, H, W)."""
    device = mean.device
    u = torch.rand((HYP['starts'],) + tuple(shape), generator=gen).to(device)  # (n, 3, H, W), pixels in [0, 1]
    u.requires_grad_(True)
    target = torch.full((HYP['starts'],), t, dtype=torch.long, device=device)
    opt = torch.optim.Adam([u], lr=HYP['lr'])
    last = math.inf
    for _ in range(HYP['steps']):
        m = solution.margin(net((u - mean) / std), target)  # (n,)
        loss = -m.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            u.clamp_(0, 1)  # project back onto the valid pixel range
        if abs(last - loss.item()) < HYP['tol'] * max(abs(last), 1e-12):
            break
        last = loss.item()
    with torch.no_grad():
        m = solution.margin(net((u - mean) / std), target)
    if HYP['reduce'] == 'max':
        return m.max().item()
    if HYP['reduce'] == 'mean':
        return m.mean().item()
    raise ValueError(f"HYP['reduce'] must be 'max' or 'mean', got {HYP['reduce']!r}")


def evidence(model, num_classes, test_images_folder_address, transformation):
    """Per-class input-space margins, the Gamma null's p-value and the verdict (see the module docstring)."""
    start = time.monotonic()
    num_classes = int(num_classes)
    with solution._Isolated(), torch.enable_grad():
        gen = torch.Generator().manual_seed(HYP['seed'])
        x, _ = load_images(test_images_folder_address, transformation)  # only its shape is used
        net, device = frozen_copy(model)
        mean, std = (v.to(device) for v in normalize_of(transformation))
        stats = [class_statistic(net, t, x.shape[1:], mean, std, gen) for t in range(num_classes)]
    p, (shape, loc, scale) = max_p_value(stats)
    target = max(range(num_classes), key=stats.__getitem__)
    return {
        'verdict': 0 if p < HYP['p_threshold'] else 1,  # 0 backdoored, 1 clean
        'p_value': p,
        'statistic': stats[target],  # largest class margin: higher = more suspect
        'target': target,
        'per_class': stats,
        'null_shape': shape, 'null_loc': loc, 'null_scale': scale,
        'seconds': time.monotonic() - start,
    }


def detect(model, num_classes, test_images_folder_address, transformation):
    """0 if the model is backdoored, 1 if it is clean."""
    return evidence(model, num_classes, test_images_folder_address, transformation)['verdict']
