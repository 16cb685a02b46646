"""Several detectors' results on one zoo, side by side, as a Markdown table.

    python -m bench.compare cache/results/default-solution.json cache/results/default-nc.json ...

Each file is what `bench.evaluate --json` wrote; files of the same detector and settings (say, one per
zoo) are merged. One row per detector (solution first), columns: accuracy, AUROC, false positives and
misses over the backdoors with ASR >= 80% (the accuracy with its 95% Wilson interval: the spread that
so few models allow), the detection rate per attack, `at target` (of the strong
backdoors flagged, how many at their true target class: one flagged at another class was right for
another reason than its trigger), weak backdoors flagged, mean seconds per model and n. The figures are
recomputed from the rows over the models every file has, so detectors are compared on the same models
even when one run was cut short. `--by data` gives one row per detector and data set instead (say, one
detector over a whole `real` zoo). Below the table, each detector against the first (solution): the
models only one of the two gets right, and the exact sign test of that split (on so few models, a
lead of a few is often noise).
"""
import argparse
import json
import math
import sys

from bench.evaluate import counted, summarise


def load(paths):
    """[(label, rows)], one per detector and settings (files of the same one are merged: one run per
    zoo), each cut to the models every run has; and how many those are."""
    runs = {}
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        label = d['detector'] + (' ' + ' '.join(d['settings']) if d.get('settings') else '')
        runs.setdefault(label, {}).update({r['name']: r for r in d['rows']})
    common = set.intersection(*({n for n, r in rows.items() if r['error'] is None} for rows in runs.values()))
    return [(label, [r for n, r in rows.items() if n in common]) for label, rows in runs.items()], len(common)


def by_data(runs):
    """The runs split per data set: one (label / data, rows) per detector and data set."""
    out = []
    for label, rows in runs:
        for d in sorted({r['data'] for r in rows}):
            out.append((f'{label} / {d}', [r for r in rows if r['data'] == d]))
    return out


def table(runs):
    summaries = [(label, summarise(rows)) for label, rows in runs]
    attacks = sorted({a for _, s in summaries for a in s['per_attack'] if a != 'clean'})
    head = ['detector', 'accuracy', 'AUROC', 'FPR', 'FNR'] + attacks + ['at target', 'weak flagged', 'mean s', 'n']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for label, s in summaries:
        lo, hi = s['accuracy_ci']
        cells = [label, f'{s["accuracy"]:.2f} ({lo:.2f}-{hi:.2f})', f'{s["auroc"]:.2f}', f'{s["fpr"]:.2f}', f'{s["fnr"]:.2f}']
        for a in attacks:
            v = s['per_attack'].get(a)
            cells.append(f'{round(v["flagged"] * v["n"])}/{v["n"]}' if v else '-')
        at, found = s['target_found']
        cells.append(f'{at}/{found}' if found else '-')
        weak = s['weak']
        cells += [f'{round(weak["flagged"] * weak["n"])}/{weak["n"]}' if weak['n'] else '-',
                  f'{s["mean_s"]:.1f}', str(s['n'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def sign_test(b, c):
    """Exact two-sided sign test (McNemar's exact test) of b models right by one detector only against
    c right by the other only: how often a split at least this uneven comes from two equally good ones."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n) if n else 1.0


def paired(runs):
    """Each run against the first, model by model on the strong backdoors and clean models both judged:
    a difference in accuracy on the same models is worth only its discordant pairs."""
    right = [{r['name']: r['verdict'] == r['truth'] for r in rows if counted(r)} for _, rows in runs]
    lines = []
    for (label, _), other in zip(runs[1:], right[1:]):
        both = right[0].keys() & other.keys()
        b = sum(right[0][m] and not other[m] for m in both)
        c = sum(other[m] and not right[0][m] for m in both)
        lines.append(f'{runs[0][0]} against {label}, {len(both)} models: right by the first only {b}, by the second '
                     f'only {c}; exact sign test p = {sign_test(b, c):.2g}')
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('results', nargs='+', help='JSON files written by bench.evaluate --json')
    ap.add_argument('--by', choices=('detector', 'data'), default='detector',
                    help='one row per detector (default) or per detector and data set')
    args = ap.parse_args(argv)
    runs, n = load(args.results)
    if n == 0:
        raise SystemExit('the result files have no model in common')
    runs.sort(key=lambda x: not x[0].startswith('solution'))  # solution first; stable: the rest keep their order
    print(table(by_data(runs) if args.by == 'data' else runs))
    if len(runs) > 1:
        print('\n' + '\n'.join(paired(runs)))
    print(f'\n{n} models in common', file=sys.stderr)


if __name__ == '__main__':
    main()
