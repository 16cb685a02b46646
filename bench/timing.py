"""Seconds per model of solution.detect() on full-width PreActResNet18s.

    python -m bench.timing [--runs 3] [--classes 10 100] [--width 64] [--size 32] [--threads N]

For each class count, a clean and a BadNets model (synthetic data, a short training run: the time
detect() takes depends on the model's shape and the machine, not on how well it was trained) are
written as contest samples under cache/timing, then detect() is called once to warm up and `runs`
times measured, on the CPU and on CUDA when present. Prints the hardware, median, max, the margin
left under the contest's 60 s, the plan (images x steps per class), the passes it ran ('both': the
patch pass and the contrast's dense pass; 'patch': the plan was too small for two) and the setting
every class ran (solution._settings): 'refined' (the release's), 'cut' (the plan's last rung did not fit
with the refinement; unrefined, the core factor's cut scored) or 'plain' (not even with the cut).
"""
import argparse
import os
import platform
import statistics
import time

import torch

import solution
from bench import attacks, data as datasets, samples, train
from bench.zoo import image_subset
from model_arch import PreActResNet18

CONTEST_LIMIT_S = 60.0


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_sample(folder, num_classes, width, attack, seed=0, size=32):
    """A briefly trained model on `size`-px synthetic images, written as a sample (reused when present)."""
    if samples.is_sample(folder):
        return samples.read(folder)
    ds = datasets.load('synthetic', seed=seed, num_classes=num_classes, size=size, n_train=10, n_test=3)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PreActResNet18(num_classes, width)
    atk = attacks.make('badnets', 0, ds.size, seed=seed) if attack else None
    train.train(model, ds, atk, epochs=1, batch=64, seed=seed, log=lambda m: None)
    x, y = image_subset(ds, seed)
    samples.write(folder, model.state_dict(), num_classes, ds.transform(), x, y, ground_truth=0 if attack else 1)
    return samples.read(folder)


def time_detect(sample, device, runs):
    model = samples.build_model(sample.state_dict, sample.num_classes).to(device)
    solution.detect(model, sample.num_classes, sample.images, sample.transformation)  # warm-up
    secs = []
    for _ in range(runs):  # evidence() is detect() plus the dict it decides from: the same work
        if device == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ev = solution.evidence(model, sample.num_classes, sample.images, sample.transformation)
        if device == 'cuda':
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
    return secs, ev


def _passes(ev):
    """The passes the call ran: 'patch' alone, or 'both' (the patch pass and the dense pass of the contrast)."""
    return 'patch' if ev['per_class_contrast'] is None else 'both'


def _setting(ev):
    """The setting every class ran (solution._settings): 'refined', 'cut' (unrefined, the core factor's
    cut scored) or 'plain' (neither)."""
    return 'refined' if ev['refine'] else 'cut' if ev['core_power'] else 'plain'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=3, help='measured calls per model after one warm-up (default 3)')
    ap.add_argument('--classes', type=int, nargs='+', default=[10, 100], help='class counts (default 10 100)')
    ap.add_argument('--width', type=int, default=64, help='channel width of the first stage (default 64: full width)')
    ap.add_argument('--size', type=int, default=32, help='image side in pixels (default 32; 64 as Tiny-ImageNet 64)')
    ap.add_argument('--threads', type=int, default=os.cpu_count(), help='torch CPU threads (default: all cores)')
    ap.add_argument('--cache', default='cache/timing', help='where the timing samples are written')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    print(f'torch {torch.__version__}, CPU {cpu_name()}, {args.threads} threads'
          + (f', CUDA {torch.cuda.get_device_name()}' if torch.cuda.is_available() else ', no CUDA'))
    print(f'detect() budget {solution.HYP["budget_s"]:.0f} s; contest limit {CONTEST_LIMIT_S:.0f} s; '
          f'width {args.width}; {args.size} px; {args.runs} runs after a warm-up')
    print(f'{"device":<7} {"classes":>7} {"model":<8} {"median_s":>9} {"max_s":>7} {"margin_s":>9} {"images":>6} {"steps":>5} {"passes":>6} {"setting":>7}')
    for k in args.classes:
        for attack in (False, True):
            kind = 'badnets' if attack else 'clean'
            name = f'w{args.width}-k{k}-{kind}' + ('' if args.size == 32 else f'-{args.size}px')  # 32 px keeps its old name
            s = make_sample(os.path.join(args.cache, name), k, args.width, attack, size=args.size)
            for device in devices:
                secs, ev = time_detect(s, device, args.runs)
                print(f'{device:<7} {k:>7} {kind:<8} {statistics.median(secs):>9.1f} {max(secs):>7.1f} '
                      f'{CONTEST_LIMIT_S - max(secs):>9.1f} {ev["images"]:>6} {ev["steps"]:>5} {_passes(ev):>6} {_setting(ev):>7}', flush=True)


if __name__ == '__main__':
    main()
