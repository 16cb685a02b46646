"""Run a detector over sample folders and report how well it does.

    python -m bench.evaluate DIR [--detector solution] [--json FILE] [--png FILE]

DIR is a zoo written by bench.zoo, the official public evaluation set as downloaded, or any folder of
samples in the contest format (bench/samples.py). Each sample is loaded safely and handed to the
detector exactly as the grader would (model on CUDA when there is one). One row per model, with the
plan solution ran (images x steps per class: on a CPU it follows the measured speed, so two runs an
hour apart can plan, and decide, differently), then a summary that counts the plans; the last line
reads `accuracy A auroc U fpr F fnr N mean_s S max_s M n K`.
"""
import argparse
import json
import math
import os
import sys
import threading
import time
from collections import Counter

import torch

from bench import explain, samples
from bench.detectors import DETECTORS, load_detector, override, restoring
from bench.samples import WEAK_ASR, read_index

# -----------------------------------------------------------------------------
# Measuring one call


class PeakMemory:
    """Peak resident memory (CPU, sampled every 20 ms) or peak CUDA allocation during a block, in MiB."""

    def __init__(self, cuda):
        self.cuda = cuda

    @staticmethod
    def _rss():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

    def _watch(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif os.path.exists('/proc/self/statm'):
            self.base = self.peak = self._rss()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2 ** 20
        elif hasattr(self, 'done'):
            self.done.set()
            self.thread.join()
            self.mib = (max(self.peak, self._rss()) - self.base) / 2 ** 20
        else:
            self.mib = float('nan')
        return False


def run_one(detector, folder, meta, explain_dir=None, detector_name='solution'):
    """One row for one sample folder; load errors become an error row. With explain_dir, a model the
    detector gets wrong also gets its picture (bench/explain.py) there, named in the row."""
    name = samples.name_of(folder)
    row = {'name': name, 'data': meta.get('data', '-'), 'attack': meta.get('attack', '-'),
           'asr': meta.get('asr'), 'split': meta.get('split'), 'truth': None, 'verdict': None, 'p_value': None, 'statistic': None,
           'target': None, 'true_target': meta.get('target'), 'seconds': None, 'peak_mib': None, 'error': None}
    try:
        s = samples.read(folder)
        model = samples.build_model(s.state_dict, s.num_classes)
    except samples.SampleError as e:
        row['error'] = str(e)
        return row
    row['truth'] = s.ground_truth
    if row['attack'] == '-':
        row['attack'] = 'clean' if s.ground_truth == 1 else ('backdoor' if s.ground_truth == 0 else '?')
    cuda = torch.cuda.is_available()
    if cuda:
        model = model.cuda()
    with PeakMemory(cuda) as mem:
        t0 = time.perf_counter()
        ev = detector.evidence(model, s.num_classes, s.images, s.transformation)
        if cuda:
            torch.cuda.synchronize()
        row['seconds'] = time.perf_counter() - t0
    row['peak_mib'] = mem.mib
    row.update(verdict=int(ev['verdict']), p_value=ev.get('p_value'), statistic=ev.get('statistic'),
               target=ev.get('target'), per_class=ev.get('per_class'), explain=None,
               p_patch=ev.get('p_patch'), per_class_dense=ev.get('per_class_dense'),  # solution's two tests
               per_class_contrast=ev.get('per_class_contrast'), own_margin=ev.get('own_margin'),
               p_release=ev.get('p_release'), p_margin=ev.get('p_margin'),  # solution's confirming test
               per_class_margin=ev.get('per_class_margin'), confirm_plan=ev.get('confirm_plan'),
               p_early=ev.get('p_early'), per_class_early=ev.get('per_class_early'),  # its early search (early_read)
               per_class_pooled=ev.get('per_class_pooled'),  # the two searches pooled (early_pool)
               absent=ev.get('absent'),  # the classes the patch test's null left out (null_absent)
               p_draws=ev.get('p_draws'), plan=_plan(ev))
    if explain_dir and row['verdict'] != row['truth'] and row['truth'] in (0, 1):
        truth = {0: 'backdoored', 1: 'clean'}[row['truth']]
        title = f'{detector_name} on {name} (truth: {truth}, attack {row["attack"]}, true target {row["true_target"]})'
        row['explain'] = explain.render(ev, model, s.images, s.transformation,
                                        os.path.join(explain_dir, f'{name}.png'), title)
    return row


def _plan(ev):
    """solution's plan as text: images x steps per class, with the draws in front when there are several
    ('3*12x25'); None for a detector without one."""
    if 'steps' not in ev:
        return None
    draws = ev.get('draws', 1)
    return (f'{draws}*' if draws > 1 else '') + f'{ev["images"]}x{ev["steps"]}'


# -----------------------------------------------------------------------------
# Summary


def auroc(scores_pos, scores_neg):
    """P(score of a backdoored model > score of a clean one), ties counted half (Mann-Whitney)."""
    if not scores_pos or not scores_neg:
        return float('nan')
    wins = sum((p > n) + 0.5 * (p == n) for p in scores_pos for n in scores_neg)
    return wins / (len(scores_pos) * len(scores_neg))


def wilson(k, n, z=1.96):
    """The Wilson score interval (95% at z = 1.96) of a proportion k / n: how far a figure measured on n
    models could move on another n like them. (nan, nan) when n is 0."""
    if n == 0:
        return float('nan'), float('nan')
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def suspicion(row):
    """Higher = more suspect: -log10 p when the detector gives a p-value, else its statistic."""
    if row['p_value'] is not None:
        return -math.log10(max(row['p_value'], 1e-300))
    return row['statistic'] if row['statistic'] is not None else 0.0


def is_weak(row):
    return row['truth'] == 0 and row['asr'] is not None and row['asr'] < WEAK_ASR


def counted(row):
    """Whether a row enters the figures: judged without error, a strong backdoor or a clean model."""
    return row['error'] is None and row['truth'] in (0, 1) and not is_weak(row)


def summarise(rows, by_split=True):
    """The figures over all rows; with by_split, the same per zoo split (tune / holdout) under 'splits'."""
    done = [r for r in rows if r['error'] is None and r['truth'] in (0, 1)]
    main = [r for r in done if counted(r)]
    pos = [r for r in main if r['truth'] == 0]
    neg = [r for r in main if r['truth'] == 1]
    correct = [r for r in main if r['verdict'] == r['truth']]
    secs = [r['seconds'] for r in done]

    def rate(rs, verdict):
        return sum(r['verdict'] == verdict for r in rs) / len(rs) if rs else float('nan')

    def groups(key, rs):
        out = {}
        for r in rs:
            out.setdefault(r.get(key), []).append(r)
        return out
    per_attack = {a: {'n': len(rs), 'flagged': rate(rs, 0)} for a, rs in sorted(groups('attack', main).items())}
    per_data = {d: {'n': len(rs), 'accuracy': sum(r['verdict'] == r['truth'] for r in rs) / len(rs)}
                for d, rs in sorted(groups('data', main).items())}
    weak = [r for r in done if is_weak(r)]
    # of the backdoored models flagged, those whose suspected target is the true one
    hits = [r for r in pos if r['verdict'] == 0 and r['true_target'] is not None]
    at_target = sum(r['target'] == r['true_target'] for r in hits)
    plans = Counter(r['plan'] for r in main if r.get('plan'))  # on a CPU the plan follows the hour's speed
    return {
        'n': len(main), 'right': len(correct), 'accuracy': len(correct) / len(main) if main else float('nan'),
        'accuracy_ci': wilson(len(correct), len(main)),  # its 95% interval: the spread n models allow
        'auroc': auroc([suspicion(r) for r in pos], [suspicion(r) for r in neg]),
        'fpr': rate(neg, 0), 'fnr': rate(pos, 1),
        'mean_s': sum(secs) / len(secs) if secs else float('nan'), 'max_s': max(secs) if secs else float('nan'),
        'per_attack': per_attack, 'per_data': per_data,
        'weak': {'n': len(weak), 'flagged': rate(weak, 0)},
        'errors': len(rows) - len(done),
        'target_hit': at_target / len(hits) if hits else float('nan'),
        'target_found': (at_target, len(hits)),  # the counts behind target_hit
        'plans': dict(plans.most_common()),  # models per plan, the most common first
        'splits': ({k: summarise(rs, by_split=False) for k, rs in sorted(groups('split', rows).items()) if k}
                   if by_split else {}),
    }

# -----------------------------------------------------------------------------
# Printing, JSON, plot

NAME_W, DATA_W = 44, 12  # the zoo's longest names, whole (synthetic100 and synthetic10 must differ)
COLUMNS = f'{{:<{NAME_W}}} {{:<{DATA_W}}} {{:<12}} {{:>5}} {{:>10}} {{:>9}} {{:>7}} {{:>7}} {{:>7}} {{:>8}}'
HEADER = COLUMNS.format('model', 'data', 'attack', 'truth', 'statistic', 'p-value', 'verdict', 'plan', 'seconds',
                        'peak_MiB')


def fmt_row(r):
    if r['error']:
        return f'{r["name"]:<{NAME_W}} ERROR {r["error"]}'
    truth = {0: 'bd', 1: 'clean'}.get(r['truth'], '?')
    verdict = {0: 'bd', 1: 'clean'}[r['verdict']]
    mark = '' if r['verdict'] == r['truth'] else ' x'
    weak = ' (weak)' if is_weak(r) else ''
    p = f'{r["p_value"]:.2e}' if r['p_value'] is not None else '-'
    stat = f'{r["statistic"]:.3g}' if r['statistic'] is not None else '-'
    return COLUMNS.format(r['name'][:NAME_W], str(r['data'])[:DATA_W], str(r['attack'])[:12], truth, stat, p,
                          verdict + mark, r.get('plan') or '-', f'{r["seconds"]:.1f}', f'{r["peak_mib"]:.0f}') + weak


def print_summary(s, out=None):
    out = out or sys.stdout
    print('-' * len(HEADER), file=out)
    for a, v in s['per_attack'].items():
        what = 'false positives' if a == 'clean' else 'detected'
        print(f'  {a:<14} n {v["n"]:>3}  {what} {100 * v["flagged"]:5.1f}%', file=out)
    for d, v in s['per_data'].items():
        print(f'  data {d:<9} n {v["n"]:>3}  accuracy {100 * v["accuracy"]:5.1f}%', file=out)
    if s['weak']['n']:
        print(f'  weak backdoors (ASR < {WEAK_ASR:.0f}%, not in the figures above) n {s["weak"]["n"]}  '
              f'detected {100 * s["weak"]["flagged"]:.1f}%', file=out)
    if s['errors']:
        print(f'  samples that failed to load: {s["errors"]}', file=out)
    if s.get('plans'):
        print('  plans (images x steps per class: models)  '
              + ', '.join(f'{plan}: {n}' for plan, n in s['plans'].items()), file=out)
    for name, v in s['splits'].items():
        print(f'  split {name:<8} n {v["n"]:>3}  accuracy {v["accuracy"]:.3f} auroc {v["auroc"]:.3f} fpr {v["fpr"]:.3f} '
              f'fnr {v["fnr"]:.3f}  weak detected {v["weak"]["flagged"]:.3f} of {v["weak"]["n"]}', file=out)
    lo, hi = s['accuracy_ci']
    print(f'  accuracy {s["right"]}/{s["n"]}, 95% interval {lo:.2f}-{hi:.2f} (Wilson: the spread {s["n"]} models allow)',
          file=out)
    print(f'accuracy {s["accuracy"]:.3f} auroc {s["auroc"]:.3f} fpr {s["fpr"]:.3f} fnr {s["fnr"]:.3f} '
          f'mean_s {s["mean_s"]:.1f} max_s {s["max_s"]:.1f} n {s["n"]}', file=out)


def plot(rows, summary, path, title):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'matplotlib not installed: no plot written to {path}')
        return
    done = [r for r in rows if counted(r)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={'width_ratios': [1, 2]})
    pos = sorted((suspicion(r) for r in done if r['truth'] == 0), reverse=True)
    neg = [suspicion(r) for r in done if r['truth'] == 1]
    thresholds = sorted(set(pos + neg), reverse=True)
    tpr = [0] + [sum(p >= t for p in pos) / max(1, len(pos)) for t in thresholds]
    fpr = [0] + [sum(n >= t for n in neg) / max(1, len(neg)) for t in thresholds]
    ax1.plot(fpr, tpr, marker='.')
    ax1.plot([0, 1], [0, 1], ls=':', c='grey')
    ax1.set(xlabel='false positive rate', ylabel='true positive rate', title=f'ROC, AUROC {summary["auroc"]:.3f}')
    attacks = sorted({r['attack'] for r in done}, key=lambda a: (a != 'clean', a))
    for i, a in enumerate(attacks):
        ys = [max(r['p_value'], 1e-12) if r['p_value'] is not None else float('nan') for r in done if r['attack'] == a]
        xs = [i + 0.15 * ((j % 5) - 2) / 2 for j in range(len(ys))]
        ax2.scatter(xs, ys, c='tab:green' if a == 'clean' else 'tab:red', s=18)
    import solution
    ax2.axhline(solution.P_THRESHOLD, ls='--', c='k', lw=1)
    ax2.set_yscale('log')
    ax2.set_xticks(range(len(attacks)), attacks, rotation=30)
    ax2.set(ylabel='p-value (log)', title='p-value per model (below the line: called backdoored)')
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f'plot: {path}')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('root', help='a folder of samples in the contest format (or one sample)')
    ap.add_argument('--detector', default='solution', help=f'one of {", ".join(DETECTORS)} (default solution)')
    ap.add_argument('--json', default=None, help='write rows and summary here (default: none)')
    ap.add_argument('--png', default=None, help='ROC and p-value plot (default: beside --json)')
    ap.add_argument('--match', default='', help='only samples whose folder name contains this text')
    ap.add_argument('--exact', action='store_true', help='--match names the whole folder name')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                    help='override one of the detector\'s HYP settings (repeatable), for ablations')
    ap.add_argument('--explain', default=None, metavar='DIR',
                    help='write a picture (bench/explain.py) of every model the detector gets wrong here')
    ap.add_argument('--threads', type=int, default=None,
                    help='torch CPU threads (default: torch\'s own; use 1 when other jobs share the cores)')
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.path.isdir(args.root):
        raise SystemExit(f'{args.root}: not a folder')
    detector = load_detector(args.detector)
    folders = samples.find(args.root, args.match, args.exact)
    if not folders:
        raise SystemExit(f'{args.root}: no sample folders (folders holding metadata.pt)')
    index = read_index(args.root)
    print(f'{args.detector} {" ".join(args.set)} on {len(folders)} samples in {args.root} '
          f'({"cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}, torch {torch.__version__})')
    print(HEADER)
    with restoring(detector):  # the --set settings hold for this run only, not for later callers
        override(detector, args.set)
        rows = []
        for folder in folders:
            row = run_one(detector, folder, index.get(samples.name_of(folder), {}),
                          args.explain, args.detector)
            rows.append(row)
            print(fmt_row(row), flush=True)
    summary = summarise(rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump({'detector': args.detector, 'settings': args.set, 'root': args.root, 'rows': rows,
                       'summary': summary}, f, indent=1)
        plot(rows, summary, args.png or os.path.splitext(args.json)[0] + '.png', f'{args.detector} on {args.root}')
    wrong = [r for r in rows if r.get('explain')]
    if wrong:
        print(f'pictures of the {len(wrong)} models called wrongly:')
        for r in wrong:
            print(f'  {r["explain"]}')
    print_summary(summary)
    return summary


if __name__ == '__main__':
    main()
