"""Run the input-level (STRIP) and repair (pruning, GoodNet) defences over a zoo.

    python -m bench.defences DIR [--json FILE] [--match TEXT] [--threads N]

These defences are not model-level detectors: they are scored on inputs. bench.zoo writes, beside
each sample, up to 200 clean test images and the triggered versions of the non-target ones
(defence_inputs/, see bench/samples.py). The defender's own clean pool is the sample's image folder,
as in the contest. Samples without defence inputs are listed and skipped.

One row per model, then per attack (backdoored models with ASR >= 80%) the means of:
STRIP FAR and FRR at the threshold set from clean inputs only (bench/baselines/strip.py); and, at clean
accuracy drops of 2, 4 and 10 points, the pruned model's clean accuracy and ASR and GoodNet's clean
accuracy and share of triggered inputs flagged (bench/baselines/fineprune.py).
"""
import argparse
import json
import os
import time

import torch

from bench import samples
from bench.baselines import fineprune, strip
from bench.samples import WEAK_ASR, read_index


def run_one(folder, meta):
    """One row: STRIP and pruning figures for one sample folder (error rows say why not)."""
    name = samples.name_of(folder)
    row = {'name': name, 'attack': meta.get('attack', '-'), 'asr': meta.get('asr'), 'error': None}
    try:
        s = samples.read(folder)
        model = samples.build_model(s.state_dict, s.num_classes)
        clean = samples.load_inputs(folder, 'clean', s.transformation)
        trig = samples.load_inputs(folder, 'triggered', s.transformation)
        pool, _ = samples.load_images(s.images, s.transformation)
    except samples.SampleError as e:
        row['error'] = str(e)
        return row
    if clean is None:
        row['error'] = 'no defence inputs (not written by bench.zoo)'
        return row
    if s.ground_truth == 0 and trig is None:
        row['error'] = 'backdoored, but no triggered inputs (trigger not rebuildable)'
        return row
    row['truth'] = s.ground_truth
    net, device = samples.frozen_copy(model.to('cuda' if torch.cuda.is_available() else 'cpu'))
    x, y = clean[0].to(device), clean[1]
    xt = trig[0].to(device) if trig is not None else None
    t0 = time.perf_counter()
    mean, std = (v.to(device) for v in samples.normalize_of(s.transformation))
    row['strip'] = strip.evaluate(net, pool.to(device), x, xt, mean, std)
    row['prune'] = fineprune.evaluate(net, x, y, xt, meta.get('target'))
    row['seconds'] = time.perf_counter() - t0
    return row


def _pct(v):
    return '-' if v is None else f'{100 * v:5.1f}'


def fmt_row(r):
    if r['error']:
        return f'{r["name"]:<34} skipped: {r["error"]}'
    st, pr = r['strip'], r['prune']
    stages = ' '.join(f'-{s["drop"]:.0f}:{s["clean_acc"]:.0f}/{s["asr"]:.0f}/{s["goodnet_flagged"]:.0f}'
                      if s['asr'] is not None else f'-{s["drop"]:.0f}:{s["clean_acc"]:.0f}' for s in pr['stages'])
    asr = f'{pr["base_asr"]:.0f}' if pr['base_asr'] is not None else '-'
    return (f'{r["name"][:34]:<34} {str(r["attack"])[:10]:<10} far {_pct(st["far"])} frr {_pct(st["frr"])}  '
            f'acc {pr["base_acc"]:.0f} asr {asr}  {stages}  {r["seconds"]:.1f}s')


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarise(rows):
    """Per attack (strong backdoors only; clean models give STRIP's FRR): means over the models."""
    out = {}
    for r in rows:
        if r['error'] or (r['truth'] == 0 and r['asr'] is not None and r['asr'] < WEAK_ASR):
            continue
        out.setdefault(r['attack'], []).append(r)
    table = {}
    for attack, rs in sorted(out.items()):
        entry = {'n': len(rs), 'strip_far': _mean([r['strip']['far'] for r in rs]),
                 'strip_frr': _mean([r['strip']['frr'] for r in rs]),
                 'base_acc': _mean([r['prune']['base_acc'] for r in rs]),
                 'base_asr': _mean([r['prune']['base_asr'] for r in rs]), 'stages': {}}
        for drop in fineprune.HYP['drops']:
            at = [s for r in rs for s in r['prune']['stages'] if s['drop'] == drop]
            entry['stages'][f'{drop:g}'] = {k: _mean([s[k] for s in at]) for k in
                                            ('clean_acc', 'asr', 'goodnet_clean_acc', 'goodnet_flagged', 'pruned')}
        table[attack] = entry
    return table


def print_summary(table):
    print('-' * 100)
    head = ' '.join(f'{"drop " + d:>22}' for d in (f'{x:g}' for x in fineprune.HYP['drops']))
    print(f'{"attack":<12} {"n":>3} {"STRIP FAR":>9} {"FRR":>5} {"acc":>5} {"asr":>5} {head}')
    print(f'{"":<12} {"":>3} {"":>9} {"":>5} {"":>5} {"":>5} '
          + ' '.join(f'{"acc/asr/GN-flag":>22}' for _ in fineprune.HYP['drops']))
    for attack, e in table.items():
        cells = []
        for st in e['stages'].values():
            vals = [st['clean_acc'], st['asr'], st['goodnet_flagged']]
            cells.append(f'{"/".join("-" if v is None else f"{v:.0f}" for v in vals):>22}')
        asr = '-' if e['base_asr'] is None else f'{e["base_asr"]:.0f}'
        print(f'{attack:<12} {e["n"]:>3} {_pct(e["strip_far"]):>9} {_pct(e["strip_frr"]):>5} '
              f'{e["base_acc"]:5.1f} {asr:>5} {" ".join(cells)}')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('root', help='a zoo written by bench.zoo (or one of its samples)')
    ap.add_argument('--json', default=None, help='write rows and the per-attack table here')
    ap.add_argument('--match', default='', help='only samples whose folder name contains this text')
    ap.add_argument('--exact', action='store_true', help='--match names the whole folder name')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s own)')
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = samples.find(args.root, args.match, args.exact)
    if not folders:
        raise SystemExit(f'{args.root}: no sample folders (folders holding metadata.pt)')
    index = read_index(args.root)
    print('row: STRIP far/frr %, unpruned clean acc and ASR, then per drop -D:acc/asr/GoodNet-flagged %')
    rows = []
    for folder in folders:
        rows.append(run_one(folder, index.get(samples.name_of(folder), {})))
        print(fmt_row(rows[-1]), flush=True)
    table = summarise(rows)
    print_summary(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump({'root': args.root, 'rows': rows, 'table': table}, f, indent=1)
    return table


if __name__ == '__main__':
    main()
