"""The bench's training loop: clean, backdoored (any `bench.attacks` attack) and adversarially trained models.

Built for a small CPU: the whole data set stays one uint8 tensor; each batch is poisoned, augmented (random
crop with zero padding, horizontal flip where the data allows) and normalised with tensor ops; no DataLoader,
no workers. All randomness (shuffling, poisoning, augmentation, attack setup) comes from one local
`torch.Generator(seed)`, so a run is deterministic given the model's initial weights (the caller's job).

Attacks whose setup needs a trained clean model (LC's PGD images, TrojanNN's patch) get it this way:
- `reference` given (a trained clean model): setup uses it; training starts from `init_from` if given,
  else from `model`'s own weights (TrojanNN, `attack.fine_tune`, starts from the reference's weights);
- else `init_from` given: that state dict is the clean reference, and training starts from it (fine-tuning);
- else `train` first trains a clean copy of `model` with the same settings (logged as `ref`), uses it as
  the reference, then trains `model` from its own initial weights (LC) or fine-tunes the reference
  (TrojanNN). An attack that asks for a robust reference (`attack.robust_eps`, LC) gets one trained with
  FGSM at that radius. Passing `reference` or `init_from` saves that extra training run.

The model receives normalised input, gray for MNIST-like data, as the contest transform gives it.
"""
import copy
import math
import time

import torch
import torch.nn.functional as F

from bench.attacks import model_input

HYP = {
    "warmup": 0.2,  # share of the steps over which lr rises linearly from 0, then falls linearly to 0
    "momentum": 0.9,  # Nesterov SGD
    "pad": 4,  # random-crop padding in px at 32 px, scaled with the image size
    "pgd_steps": 3,  # steps of the 'pgd' adversarial training, step 2.5·eps/steps
    "fgsm_step": 1.25,  # FGSM-with-random-start step, in units of eps (Wong et al. 2020)
    "log_test": 200,  # test images scored in the per-epoch log line (the returned figures use all); more
    # would cost a sixth of a default-zoo model's training time, and the models are the same either way
    "eval_batch": 512,  # images per forward pass in evaluation
}
ADV_MODES = (None, "fgsm", "pgd")


# ---------------------------------------------------------------------------------------------------------
# Augmentation and adversarial examples, per batch with tensor ops

def random_crop(x, pad, gen):
    """Zero-pad by `pad` px and crop back at a random offset per image (torchvision's RandomCrop)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    dy = torch.randint(2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[batch, chans, rows, cols]  # (N, C, H, W)


def random_hflip(x, gen):
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment_batch(x, data, gen):
    pad = max(1, round(HYP["pad"] * data.size / 32))
    x = random_crop(x, pad, gen)
    return random_hflip(x, gen) if data.hflip else x


def adversarial(model, x, y, data, mode, eps, gen, loss_fn):
    """FGSM with a random start, or PGD, in pixel space; the model stays in train mode as in the papers."""
    steps, step = (1, HYP["fgsm_step"] * eps) if mode == "fgsm" else (HYP["pgd_steps"], 2.5 * eps / HYP["pgd_steps"])
    delta = ((torch.rand(x.shape, generator=gen) * 2 - 1) * eps).to(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(model_input((x + delta).clamp(0, 1), data)), y)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta + step * grad.sign()).clamp(-eps, eps).detach()
    return (x + delta).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# Evaluation

def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def _predict(model, data, x, trigger=None):
    """Predicted classes for uint8 images (optionally triggered), in eval mode."""
    model.eval()
    out = []
    for chunk in x.split(HYP["eval_batch"]):
        z = chunk.to(_device(model)).float() / 255  # (B, 3, H, W)
        if trigger is not None:
            z = trigger(z)
        out.append(model(model_input(z, data)).argmax(1).cpu())
    return torch.cat(out)


def _test_subset(data, limit):
    """Every k-th test image, at most `limit` of them (all if None): spread over the classes even when the
    test split is sorted by label."""
    n = len(data.y_test)
    step = 1 if limit is None else max(1, math.ceil(n / limit))
    return data.x_test[::step], data.y_test[::step]


def accuracy(model, data, limit=None):
    """Clean test accuracy in %."""
    x, y = _test_subset(data, limit)
    return 100.0 * (_predict(model, data, x) == y).float().mean().item()


def attack_success(model, data, attack, limit=None):
    """% of non-target test images sent to the target by the test-time trigger (gray-converted if data.gray,
    inside model_input, after the trigger as the contest transform would)."""
    x, y = _test_subset(data, limit)
    x = x[y != attack.target]
    return 100.0 * (_predict(model, data, x, attack.trigger) == attack.target).float().mean().item()


# ---------------------------------------------------------------------------------------------------------
# Training

def _lr_factor(step, total):
    """One cycle: linear warm-up over HYP['warmup'] of the steps, then linear decay to 0."""
    warm = max(1, int(HYP["warmup"] * total))
    return step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


def _batches(n, batch, gen):
    """Shuffled index batches; the ragged tail is dropped (a batch of 1 would break BatchNorm)."""
    perm = torch.randperm(n, generator=gen)
    size = min(batch, n)
    return [perm[i:i + size] for i in range(0, n - size + 1, size)]


def _steps_per_epoch(n, batch):
    return n // min(batch, n)


def _reference(model, data, attack, reference, init_from, opts, log):
    """The clean model an attack's setup optimises against (see module doc)."""
    if reference is not None:
        return reference
    ref = copy.deepcopy(model)
    if init_from is not None:
        ref.load_state_dict(init_from)
        return ref.eval()
    if attack.robust_eps > 0:
        opts = dict(opts, adv="fgsm", adv_eps=attack.robust_eps)
    log(f"ref: training a clean reference model for the attack's setup{' (FGSM)' if attack.robust_eps else ''}")
    train(ref, data, None, log=lambda s: log("ref " + s), **opts)
    return ref


def train(model, data, attack=None, *, epochs=10, batch=128, lr=0.05, wd=5e-4, label_smoothing=0.0,
          augment=True, adv=None, adv_eps=4 / 255, seed=0, init_from=None, reference=None, log=print) -> dict:
    """Train `model` in place on `data`, poisoned by `attack` if given; returns the final figures."""
    if adv not in ADV_MODES:
        raise ValueError(f"adv must be one of {ADV_MODES}, got {adv!r}")
    start = time.time()
    gen = torch.Generator().manual_seed(seed)
    opts = dict(epochs=epochs, batch=batch, lr=lr, wd=wd, label_smoothing=label_smoothing, augment=augment,
                adv=adv, adv_eps=adv_eps, seed=seed)
    if attack is not None:
        ref = _reference(model, data, attack, reference, init_from, opts, log) if attack.needs_model else None
        attack.setup(data, gen, model=ref)
        if ref is not None and init_from is None and attack.fine_tune:
            init_from = ref.state_dict()
    if init_from is not None:
        model.load_state_dict(init_from)

    device = _device(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=HYP["momentum"], nesterov=True, weight_decay=wd)
    total_steps = epochs * _steps_per_epoch(len(data.x_train), batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total_steps))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    asr = None
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(len(data.x_train), batch, gen):
            x = data.x_train[idx].float() / 255  # (B, 3, H, W) in [0, 1]
            y = data.y_train[idx]
            if attack is not None:
                x, y = attack.poison_batch(x, y, gen)  # triggers go on before augmentation
            if augment:
                x = augment_batch(x, data, gen)
            x, y = x.to(device), y.to(device)
            if adv is not None:
                x = adversarial(model, x, y, data, adv, adv_eps, gen, loss_fn)
            # model_input turns MNIST-like data gray here, after poisoning: crop and flip commute with it,
            # and adversarial perturbations are then seen gray too, as the contest transform would show them
            loss = loss_fn(model(model_input(x, data)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(y), count + len(y)
        acc = accuracy(model, data, HYP["log_test"])
        line = f"epoch {epoch + 1}/{epochs} loss {total / max(1, count):.3f} acc {acc:.1f}"
        if attack is not None:
            line += f" asr {attack_success(model, data, attack, HYP['log_test']):.1f}"
        log(line + f" {time.time() - start:.1f}s")

    clean_acc = accuracy(model, data)
    if attack is not None:
        asr = attack_success(model, data, attack)
    model.eval()
    return dict(clean_acc=clean_acc, asr=asr, seconds=time.time() - start, epochs=epochs)

