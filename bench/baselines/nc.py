"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer the smallest patch trigger per class.

Per class t: a mask m = sigmoid(a) (1, H, W) and a pattern p = (tanh(b) + 1) / 2 (3, H, W, pixels in
[0, 1], so always in the valid range once normalised) stamp the clean images, x' = (1 - m) x + m p, and
Adam minimises CE(x', t) + lambda * |m|_1. The weight lambda adapts as in NC: after `patience`
consecutive steps in which at least 99% of the images reach t it grows by 1.5 (shrink the mask), after
`patience` consecutive failures it falls by 1.5^1.5 (reach the class first). The class statistic is
the L1 norm of the smallest mask that reached 99%, or of the final mask if none did.

An all-to-one backdoor gives its target an abnormally small mask. Anomaly index = (median - min) /
(1.4826 MAD) over the K norms; backdoored iff it exceeds 2. No p-value.

Simplifications against the original (documented, for a bench budget): a fixed number of full-batch
steps on a fixed subset of the clean images instead of epochs of mini-batches with early stopping;
lambda starts at its initial value rather than at 0 with a warm-up phase. The blend is done on the
normalised tensors: Normalize is affine per channel, so blending there equals blending the pixels.

Interface: evidence() returns verdict (0 backdoored, 1 clean), p_value None, statistic (the anomaly
index: higher = more suspect), target (the class with the smallest mask), per_class (K mask norms,
lower = more suspect), seconds.
"""
import time

import torch
import torch.nn.functional as F

import solution
from bench.samples import frozen_copy, load_images, normalize_of, robust_z

HYP = {
    'images': 20,          # clean images the trigger must carry (a fixed, class-balanced subset)
    'steps': 80,           # Adam steps per class (~45 s for 10 classes, 32 px, width 16, one CPU core)
    'lr': 0.1,             # Adam learning rate on the mask and pattern logits
    'betas': (0.5, 0.9),   # Adam betas, as in NC
    'init_cost': 1e-3,     # initial lambda, per mask pixel (|m|_1 is a sum over H x W)
    'cost_up': 1.5,        # lambda multiplier after `patience` successes in a row
    'cost_down': 1.5 ** 1.5,  # lambda divisor after `patience` failures in a row
    'patience': 5,         # steps in a row before lambda moves
    'success': 0.99,       # share of images that must reach the class for a mask to count
    'threshold': 2.0,      # backdoored iff anomaly index > this
    'seed': 0,             # seeds the local generator of the initial pattern
}

def anomaly_index(norms):
    """(median - min) / (1.4826 * MAD) of the per-class mask norms: minus the smallest robust z-score."""
    return -min(robust_z(norms))


def reverse_trigger(net, x, t, mean, std, gen):
    """The smallest mask (1, 1, H, W) and its pattern (1, 3, H, W, pixels) sending >= HYP['success'] of
    x (n, 3, H, W) to class t, with the mask's L1 norm: (norm, mask, pattern); the final ones if no
    mask reached the goal."""
    n, _, h, w = x.shape
    a = torch.zeros(1, 1, h, w, device=x.device, requires_grad=True)  # mask logits: m = 0.5 at the start
    b = torch.randn(1, 3, h, w, generator=gen).to(x.device).requires_grad_(True)  # pattern logits
    opt = torch.optim.Adam([a, b], lr=HYP['lr'], betas=HYP['betas'])
    target = torch.full((n,), t, dtype=torch.long, device=x.device)
    cost, streak_ok, streak_bad = HYP['init_cost'], 0, 0
    best = None
    for _ in range(HYP['steps']):
        m = torch.sigmoid(a)  # (1, 1, H, W)
        pixels = (torch.tanh(b) + 1) / 2  # (1, 3, H, W) in [0, 1]
        logits = net((1 - m) * x + m * (pixels - mean) / std)  # (n, K)
        norm = m.sum()
        loss = F.cross_entropy(logits, target) + cost * norm
        opt.zero_grad()
        loss.backward()
        opt.step()
        ok = (logits.argmax(1) == target).float().mean().item() >= HYP['success']
        if ok and (best is None or norm.item() < best[0]):
            best = (norm.item(), m.detach().clone(), pixels.detach().clone())
        streak_ok, streak_bad = (streak_ok + 1, 0) if ok else (0, streak_bad + 1)
        if streak_ok >= HYP['patience']:
            cost, streak_ok = cost * HYP['cost_up'], 0
        elif streak_bad >= HYP['patience']:
            cost, streak_bad = cost / HYP['cost_down'], 0
    if best is None:
        with torch.no_grad():
            best = (torch.sigmoid(a).sum().item(), torch.sigmoid(a), (torch.tanh(b) + 1) / 2)
    return best


def class_mask_norm(net, x, t, mean, std, gen):
    """L1 norm of the smallest mask sending >= HYP['success'] of x (n, 3, H, W) to class t."""
    return reverse_trigger(net, x, t, mean, std, gen)[0]


def _subset(labels, n):
    """Indices of at most n images, round-robin over labels (the same subset solution.py would take)."""
    order = solution._balanced_subset([(i, int(l)) for i, l in enumerate(labels)], n)
    return torch.tensor([i for i, _ in order], dtype=torch.long)


def evidence(model, num_classes, test_images_folder_address, transformation):
    """Per-class mask norms, their anomaly index and the verdict (see the module docstring)."""
    start = time.monotonic()
    num_classes = int(num_classes)
    with solution._Isolated(), torch.enable_grad():
        gen = torch.Generator().manual_seed(HYP['seed'])
        x, labels = load_images(test_images_folder_address, transformation)  # (N, 3, H, W), (N,)
        net, device = frozen_copy(model)
        x = x[_subset(labels, HYP['images'])].to(device)
        mean, std = (v.to(device) for v in normalize_of(transformation))
        norms = [class_mask_norm(net, x, t, mean, std, gen) for t in range(num_classes)]
    index = anomaly_index(norms)
    return {
        'verdict': 0 if index > HYP['threshold'] else 1,  # 0 backdoored, 1 clean
        'p_value': None,
        'statistic': index,  # anomaly index of the smallest mask: higher = more suspect
        'target': min(range(num_classes), key=norms.__getitem__),
        'per_class': norms,
        'seconds': time.monotonic() - start,
    }


def detect(model, num_classes, test_images_folder_address, transformation):
    """0 if the model is backdoored, 1 if it is clean."""
    return evidence(model, num_classes, test_images_folder_address, transformation)['verdict']
