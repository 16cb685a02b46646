"""Record what solution.evidence() computes image by image, then score the records again offline.

    python -m bench.record DIR --out cache/records/NAME [--match TEXT [--exact]] [--set KEY=VALUE] [--threads 1]
    python -m bench.record --rescore cache/records/NAME [--reduce mean_other] [--set core=0.5] [--json out.json]

Recording runs evidence() unchanged on every sample in DIR. Hooks copy, for every class and pass, each
image's softplus margin under the class's shared direction at every norm in HYP['alphas'], where the
pushed images land, the labels of the images, and the folder's clean penultimate features. One file per
model (torch.save of tensors, numbers and strings; read back with weights_only=True).

Rescoring rebuilds the per-class statistics from those margins under another reduction over the images,
then applies the release's own landing factor, contrast and p-value (solution._decide), so a change to
the statistic can be tried on many models in seconds, paired with the run that produced the record.
Reductions: 'recorded' (the default: the one the record's call used, so rescoring reproduces the
recorded p-value; a call that ran the margin test, HYP['confirm'], has its statistics recorded as they
came and combined with the rescored release as the call combined them), 'mean' (over all images),
'median' (the median over all images: HYP['aggregate'] 'median'), 'mean_other' (the mean over the
images not labelled with the class), 'median_other' (their median). A call whose draw left each
class's own images out (HYP['exclude_own']; by default where the draw holds fewer images than half the
classes) holds margins under directions built without them and scored with 'mean_other'; 'recorded'
picks that from the record's settings and draw. With --json the rows are written in bench.evaluate's
format, for bench.compare. --set changes a setting that acts after the margins (RESCORABLE: the
factors' exponents, the log, the null and its scale floor, the spike test, the contrast's gate); one
recording with the core factor on and the refinement off holds the cut margins, so it rescores at any
exponent, 0 included (with the refinement on, no cut is scored: the factor is 1 at any exponent; a
call that ran without the cut, evidence 'core_power' 0, rescores at 0 only). Settings that change
more (steps, images, area, ...) need a new recording: pass them with --set when recording.
"""
import argparse
import contextlib
import glob
import json
import os
import time

import torch

import solution
from bench import samples
from bench.detectors import override, restoring


@contextlib.contextmanager
def _hooks(rec):
    """Wrap the solution functions whose results the record needs; restore them on exit."""
    orig = solution._transfer_margins, solution._every_class, solution._clean_features

    def transfer_margins(split, h0, delta, target, *rest):
        out = orig[0](split, h0, delta, target, *rest)
        k = len(out[0][0])
        rec['calls'].append({'classes': target.view(k, -1)[:, 0].cpu(),
                             'margins': [m.detach().cpu() for m, _, _ in out],
                             'landed': [f.detach().cpu() for _, f, _ in out],
                             'cut': [None if c is None else c.detach().cpu() for _, _, c in out]})
        return out

    def every_class(split, h0, labels, *args):
        rec['calls'] = []
        out = orig[1](split, h0, labels, *args)
        rec['passes'].append({'labels': labels.cpu(), 'calls': rec.pop('calls')})
        return out

    def clean_features(*args):
        feats, y = orig[2](*args)
        rec['feats'], rec['y'] = (None, None) if feats is None else (feats.detach().cpu(), y.cpu())
        return feats, y
    solution._transfer_margins, solution._every_class, solution._clean_features = transfer_margins, every_class, clean_features
    try:
        yield rec
    finally:
        solution._transfer_margins, solution._every_class, solution._clean_features = orig


def record(model, num_classes, folder, transformation):
    """evidence() on one model, and what it computed per image (see the module docstring)."""
    rec = {'passes': [], 'feats': None, 'y': None}
    with _hooks(rec):
        rec['evidence'] = solution.evidence(model, num_classes, folder, transformation)
    rec['num_classes'] = int(num_classes)
    rec['hyp'] = {k: v for k, v in solution.HYP.items() if isinstance(v, (int, float, str, bool, tuple))}
    return rec


def _other(m, labels, t):
    keep = labels != t
    return m[keep] if 0 < int(keep.sum()) < len(labels) else m


REDUCE = {
    'mean': lambda m, labels, t: m.mean(),
    'mean_other': lambda m, labels, t: _other(m, labels, t).mean(),
    'median': lambda m, labels, t: m.quantile(0.5),
    'median_other': lambda m, labels, t: _other(m, labels, t).quantile(0.5),
}


# The settings rescoring applies itself (solution._decide and the factors); any other needs a new recording.
RESCORABLE = ('core', 'landing', 'log', 'contrast_power', 'contrast_cap', 'null', 'scale_floor', 'spike', 'confirm_trim',
              'confirm_trim_largest', 'contrast_own', 'early_pool', 'null_absent')


# Settings whose default is no longer off: a record taken before they existed ran without them.
ADDED_OFF = {'exclude_own': False, 'own_floor': False, 'scale_floor': 0.0, 'combine': 'both',  # 'both': the confirming test before the choice
             'contrast_cap': False, 'confirm_quantile': 1.0,  # 1.0: the margin test's largest margin
             'confirm_quantile_min': 0, 'confirm_trim': 0, 'confirm_trim_largest': 0,
             'contrast_own': 0.0}


def _apply(settings, hyp):
    """A record's settings over solution's, those it predates (ADDED_OFF) as they ran: off."""
    settings.update(ADDED_OFF)
    settings.update(hyp)


def recorded(rec):
    """The reduction the record's own call scored with: the mean or the median (its HYP['aggregate']),
    over the other classes' images where its draw left each class's own images out (its
    HYP['exclude_own'], 'sparse' resolved for the draw, solution._when)."""
    with restoring(solution) as settings:
        _apply(settings, rec['hyp'])
        other = solution._when('exclude_own', rec['evidence']['images'], rec['num_classes'])
        return solution.HYP['aggregate'] + ('_other' if other else '')


def rescore(rec, reduce='recorded', sets=()):
    """(p-value, suspected target, per-pass final statistics) of a record under a reduction over images
    ('recorded': the one its call used, so the recorded p-value comes back); sets: KEY=VALUE settings
    (RESCORABLE only) applied over the record's own, e.g. 'core=0.5'."""
    if reduce != 'recorded' and reduce not in REDUCE:
        raise ValueError(f"reduce is {reduce!r}; choose 'recorded' or one of {', '.join(REDUCE)}")
    hyp = rec['hyp']
    for item in sets:
        if item.partition('=')[0] not in RESCORABLE:
            raise ValueError(f"rescoring can change only {', '.join(RESCORABLE)}; {item!r} needs a new recording")
    if hyp.get('statistic') != 'transfer' or tuple(hyp.get('snapshots', ())) != (1.0,):
        raise ValueError("rescoring needs a record of the transfer statistic taken once, at the end "
                         f"(statistic 'transfer', snapshots (1.0,)); this one has {hyp.get('statistic')!r}, "
                         f"{hyp.get('snapshots')!r}")
    k = rec['num_classes']
    with restoring(solution) as settings:
        _apply(settings, hyp)  # the recording's settings (landing, null, log, contrast_power, ...)
        settings['core'] = rec['evidence'].get('core_power', settings['core'])  # the exponent the call ran (0: no cut fitted)
        override(solution, sets)
        # the cut is scored where solution scores it: core on, no refinement (refined, the factor is 1);
        # the refinement the call ran (0 where it did not fit), else (a record from before) the setting
        refine = rec['evidence'].get('refine', solution.HYP['refine'])
        if solution._cuts(solution._area(), refine) and any(call.get('cut', [None])[0] is None for call in rec['passes'][0]['calls']):
            raise ValueError('this record holds no cut margins (taken with the core factor off): it cannot be rescored with core on')
        fn = REDUCE[recorded(rec) if reduce == 'recorded' else reduce]
        draws = rec['evidence'].get('draws', 1)  # each draw ran its passes in turn: patch, then dense
        per_draw = len(rec['passes']) // draws
        decided = [_rescore_draw(rec, rec['passes'][d * per_draw:(d + 1) * per_draw], fn, k) for d in range(draws)]
        p, judged, finals = decided[solution.median_draw([t[0] for t in decided])]  # as evidence()
        margins = rec['evidence'].get('per_class_margin')
        if margins is not None:  # the margin test's statistics as recorded, combined as the call combined them
            early = rec['evidence'].get('per_class_early')
            plan = rec['evidence'].get('confirm_plan')
            p, _, _, decides = solution.combine(p, margins, finals, plan, early)
            judged = solution.judged_margins(decides, margins, early, plan) if decides else judged
    return p, max(range(k), key=lambda i: judged[i]), finals


def _rescore_draw(rec, passes, fn, k):
    """(p-value, judged statistics, final statistics) of one draw's passes (patch, then dense), under the
    settings in force."""
    runs, spikes = [], None
    for ps in passes:
        stats, landed, cut = [], [], []
        for call in ps['calls']:
            classes = call['classes'].tolist()

            def reduced(margins):
                return torch.stack([fn(margins[j], ps['labels'], t) for j, t in enumerate(classes)])
            per_alpha = [(reduced(m), f) for m, f in zip(call['margins'], call['landed'])]
            best, where = solution._best_norm(per_alpha)  # the best over the norms, as _transfer
            stats += best.tolist()
            landed.append(where)
            cuts = call.get('cut', [None])
            cut = None if cut is None or cuts[0] is None else cut + solution._best_cut([reduced(c) for c in cuts]).tolist()
        runs.append((stats, solution._landing_factors(landed, rec['feats'], rec['y'], k), solution.core_factors(stats, cut)))
        if len(runs) == 1:  # the patch pass's landing points
            spikes = solution._spikes(landed, rec['feats'])
    floor = solution._when('own_floor', rec['evidence']['images'], k)  # as evidence() resolved it
    absent = solution._absent(passes[0]['labels'].tolist(), k)  # as evidence() resolved it for the draw
    finals, _, p, _, _, judged = solution._decide(runs, rec['evidence']['own_margin'], True, spikes, floor, absent)
    return p, judged, finals


def _row(name, rec, p, target):
    m = rec.get('meta', {})
    return {'name': name, 'data': m.get('data', '-'), 'attack': m.get('attack', '-'), 'asr': m.get('asr'),
            'split': m.get('split'), 'truth': rec['truth'], 'verdict': 0 if p < solution.P_THRESHOLD else 1,
            'p_value': p, 'statistic': None, 'target': target, 'true_target': m.get('target'),
            'seconds': rec['seconds'], 'peak_mib': None, 'error': None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('root', nargs='?', help='a folder of samples to record')
    ap.add_argument('--out', help='folder for the records (one NAME.pt per model)')
    ap.add_argument('--match', default='', help='only samples whose folder name contains this text')
    ap.add_argument('--exact', action='store_true', help='--match names the whole folder name')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                    help=f"a solution HYP setting while recording; with --rescore, one of {', '.join(RESCORABLE)} over the record's own")
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    ap.add_argument('--rescore', nargs='+', metavar='RECORDS', help='folders of records to score again')
    ap.add_argument('--reduce', default='recorded', choices=['recorded'] + sorted(REDUCE),
                    help="reduction over images (default recorded: the one the record's call used)")
    ap.add_argument('--json', help='rescore: write the rows in bench.evaluate\'s format here')
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rescore:
        files = sorted(f for d in args.rescore for f in glob.glob(os.path.join(d, '*.pt')))
        rows = []
        for f in files:
            rec = torch.load(f, weights_only=True)
            p, target, _ = rescore(rec, args.reduce, args.set)
            name = os.path.basename(f)[:-3]
            rows.append(_row(name, rec, p, target))
            print(f'{name:44s} truth {rec["truth"]} recorded p {rec["evidence"]["p_value"]:.3g} {args.reduce} p {p:.3g} target {target}')
        if args.json:
            with open(args.json, 'w') as fh:
                json.dump({'detector': 'solution', 'settings': [f'reduce={args.reduce}'] + args.set, 'root': ' '.join(args.rescore),
                           'rows': rows}, fh, indent=1)
        return rows
    if not args.root or not args.out:
        ap.error('give a sample folder and --out to record, or --rescore RECORDS')
    with restoring(solution):  # the settings hold for this recording only
        override(solution, args.set)
        _record_all(args.root, args.out, args.match, args.exact)


def _record_all(root, out, match, exact):
    os.makedirs(out, exist_ok=True)
    index = samples.read_index(root)
    for folder in samples.find(root, match, exact):
        name = samples.name_of(folder)
        path = os.path.join(out, name + '.pt')
        if os.path.exists(path):
            continue
        s = samples.read(folder)
        model = samples.build_model(s.state_dict, s.num_classes)
        t0 = time.perf_counter()
        rec = record(model, s.num_classes, s.images, s.transformation)
        rec.update(seconds=time.perf_counter() - t0, truth=s.ground_truth, meta=index.get(name, {}))
        torch.save(rec, path)
        ev = rec['evidence']
        print(f'{name:44s} truth {s.ground_truth} p {ev["p_value"]:.4g} plan {ev["images"]}x{ev["steps"]} '
              f'{rec["seconds"]:.1f} s', flush=True)


if __name__ == '__main__':
    main()
