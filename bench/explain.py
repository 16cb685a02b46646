"""One picture per model: why the detector decided what it did.

    python -m bench.explain SAMPLE_DIR [--detector NAME] --out FILE.png

Left: the per-class statistics, the suspected target in red. Middle: the null the detector fitted to
the other classes (exponential for solution and seed, Gamma for mmbd), the tail beyond the largest
statistic shaded, the p-value and the verdict; detectors without a null (nc, l1mad) show their robust
z-scores and threshold instead. Right: Neural Cleanse's smallest mask and pattern that carry clean images of other classes to the
suspected target (bench/baselines/nc.py), stamped on one clean image. For a patch backdoor the mask is
small and sits where the trigger was; for a clean model it is large and diffuse.

bench.evaluate --explain DIR writes one of these for every model it gets wrong.
"""
import argparse
import os

import torch

from bench import samples
from bench.baselines import nc
from bench.detectors import DETECTORS, load_detector, override, restoring
from bench.samples import normalize_of, robust_z

TRIGGER_IMAGES = 20  # clean images the reverse-engineered trigger must carry to the target


def suspected_trigger(net, x, labels, target, mean, std):
    """Neural Cleanse's smallest mask and pattern for the target (bench/baselines/nc.py) on clean images
    of other classes: (mask (1, 1, H, W), pattern (1, 3, H, W) pixels, share of images it carries)."""
    others = x[labels != target] if (labels != target).any() else x
    others = others[:TRIGGER_IMAGES]
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        _, mask, pattern = nc.reverse_trigger(net, others, target, mean, std, gen)
    with torch.no_grad():
        stamped = (1 - mask) * others + mask * (pattern - mean) / std
        carried = (net(stamped).argmax(1) == target).float().mean().item()
    return mask, pattern, carried


# solution's tests by name (evidence 'judged') and the per-class statistics each one judged
JUDGED = {'patch': ('per_class', 'statistics'), 'contrast': ('per_class_contrast', 'contrast'),
          'spike': ('per_class_spike', 'spike'), 'margin': ('per_class_margin', 'largest margin'),
          'early': ('per_class_early', 'early margin'), 'pooled': ('per_class_pooled', 'pooled margins')}


def judged_statistics(ev):
    """(name, per-class statistics) of the test that decided; a detector that names none: its 'per_class'."""
    key, name = JUDGED.get(ev.get('judged'), JUDGED['patch'])
    return name, [float(v) for v in ev[key]]


def null_density(ev, xs):
    """The fitted null's density at xs, or None when the detector has no parametric null."""
    if ev.get('null_loc') is None or not ev.get('null_scale'):
        return None
    z = (xs - ev['null_loc']).clamp_min(0)
    if ev.get('null_shape') is not None:  # Gamma
        d = torch.distributions.Gamma(torch.tensor(float(ev['null_shape'])), 1 / torch.tensor(float(ev['null_scale'])))
        return torch.where(xs > ev['null_loc'], d.log_prob(z.clamp_min(1e-12)).exp(), torch.zeros_like(xs))
    return torch.where(xs >= ev['null_loc'], torch.exp(-z / ev['null_scale']) / ev['null_scale'], torch.zeros_like(xs))


def render(ev, model, images_folder, transformation, path, title):
    """Draw the picture for one model from its evidence dict; returns the path written (None without
    matplotlib)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'matplotlib not installed: no picture written to {path}')
        return None
    name, stats = judged_statistics(ev)  # the picture shows the test that decided, whose null ev holds
    target = int(ev['target'])
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), gridspec_kw={'width_ratios': [2, 2, 1, 1, 1]})
    ax = axes[0]
    ax.bar(range(len(stats)), stats, color=['tab:red' if i == target else 'tab:blue' for i in range(len(stats))])
    ax.set(xlabel='class', ylabel='statistic', title=f'per-class {name}, suspected target {target}')

    ax = axes[1]
    others = torch.tensor([s for i, s in enumerate(stats) if i != target])
    top = max(stats)
    xs = torch.linspace(min(stats + [ev.get('null_loc') or min(stats)]), top * 1.15 + 1e-9, 300)
    dens = null_density(ev, xs)
    verdict = {0: 'backdoored', 1: 'clean'}[int(ev['verdict'])]
    if dens is not None:
        ax.hist(others.tolist(), bins=min(20, max(5, len(others) // 2)), density=True, alpha=0.4, color='tab:blue',
                label='other classes')
        ax.plot(xs, dens, c='k', lw=1, label='fitted null')
        tail = xs >= top
        ax.fill_between(xs[tail], dens[tail], color='tab:red', alpha=0.5, label='tail beyond the max')
        ax.axvline(top, c='tab:red', ls='--', lw=1)
        ax.set(xlabel='statistic', title=f'p = {ev["p_value"]:.3g}: {verdict}')
        ax.legend(fontsize=7)
    else:
        z = robust_z(stats)
        ax.scatter(range(len(z)), z, c=['tab:red' if i == target else 'tab:blue' for i in range(len(z))], s=14)
        ax.set(xlabel='class', ylabel='robust z', title=f'statistic {ev["statistic"]:.3g}: {verdict}')

    x, labels = samples.load_images(images_folder, transformation)
    net, device = samples.frozen_copy(model)
    mean, std = (v.to(device) for v in normalize_of(transformation))
    x = x.to(device)
    mask, pattern, carried = suspected_trigger(net, x, labels.to(device), target, mean, std)
    i = int((labels != target).nonzero().flatten()[0]) if (labels != target).any() else 0
    clean = (x[i:i + 1] * std + mean).clamp(0, 1)
    stamped = (1 - mask) * clean + mask * pattern
    with torch.no_grad():
        p_target = net((stamped - mean) / std).softmax(1)[0, target].item()
    for ax, img, name in (
            (axes[2], clean, f'clean image (label {int(labels[i])})'),
            (axes[3], stamped, f'with the reverse-engineered\ntrigger: P(class {target}) {p_target:.2f}'),
            (axes[4], mask * pattern, f'trigger: mask L1 {mask.sum().item():.0f} px,\ncarries {100 * carried:.0f}% '
                                      'of clean images')):
        ax.imshow(img[0].permute(1, 2, 0).detach().cpu().clamp(0, 1).numpy())
        ax.set_title(name, fontsize=9)
        ax.axis('off')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('sample', help='one sample folder in the contest format')
    ap.add_argument('--detector', default='solution', help=f'one of {", ".join(DETECTORS)} (default solution)')
    ap.add_argument('--out', required=True, help='the PNG to write')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override a HYP setting')
    args = ap.parse_args(argv)
    detector = load_detector(args.detector)
    try:
        s = samples.read(args.sample)
        model = samples.build_model(s.state_dict, s.num_classes)
    except samples.SampleError as e:
        raise SystemExit(str(e))
    with restoring(detector):  # the --set settings hold for this picture only
        override(detector, args.set)
        ev = detector.evidence(model, s.num_classes, s.images, s.transformation)
    truth = {0: 'backdoored', 1: 'clean'}.get(s.ground_truth, 'unknown')
    title = f'{args.detector} on {samples.name_of(args.sample)} (truth: {truth})'
    if render(ev, model, s.images, s.transformation, args.out, title):
        print(f'picture: {args.out}')


if __name__ == '__main__':
    main()
