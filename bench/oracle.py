"""The true trigger, measured in the detector's own terms: is a miss the search's fault or the statistic's?

    python -m bench.oracle DIR [--match TEXT [--exact]] [--records cache/records/NAME] [--set KEY=VALUE] [--json FILE]

solution.py never sees the trigger: it searches, per class, for a patch-limited change of the conv1
activations that every image shares, and scores that shared direction (the transfer statistic). For a
backdoored sample written by bench.zoo the trigger is known: defence_inputs/ holds clean test images and
the triggered versions of the non-target ones, in the same order. This tool pushes the same clean images
along the trigger's own shared direction (the normalised mean of the images' unit conv1 changes, as
solution._transfer_margins builds a class's direction) at the detector's norms, and reports:

  r        the trigger's conv1 change relative to the activation's norm (median over images)
  pos90    the share of positions that carries 90% of that change's energy (median): small for a patch
  agree    the mean cosine between each image's change and the shared direction: 1 if the trigger is one change
  true_S   the transfer statistic of the trigger's direction (mean softplus margin, best over HYP['alphas'])
  cut      its core ratio C / S (solution._core cut to HYP['area'] of the positions), capped at 1
  found_S  the statistic the detector's search found for the target class (raw, before the factors)
  rank     the target's rank among the classes by found statistic (1 = largest)
  p_true   the patch test's plain p-value (raw statistics, no factors) if the search had found the trigger:
           the target's statistic replaced by the larger of found_S and true_S

A backdoor with true_S far above every class's found statistic but found_S among them is a search miss:
a better search would catch it. One whose true_S does not stand out is a statistic miss: the trigger is
not more transferable than the model's naturally easy classes at these norms. The found statistics come
from a bench.record record of the sample when --records has one, else from solution.evidence() (with the
same --set settings; `--set budget_s=1000` for the top rung). Clean samples and samples without
triggered inputs are skipped.
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

import solution
from bench import samples
from bench.detectors import override, restoring

ORACLE_IMAGES = 30  # clean non-target images pushed along the trigger's direction (solution's top rung)


def paired_inputs(folder, transformation, target):
    """(clean, triggered): the sample's clean non-target defence images and their triggered versions,
    row for row as bench.zoo wrote them; None when the sample has no triggered inputs."""
    clean = samples.load_inputs(folder, 'clean', transformation)
    trig = samples.load_inputs(folder, 'triggered', transformation)
    if clean is None or trig is None:
        return None
    x = clean[0][clean[1] != target]
    if len(x) != len(trig[0]) or not torch.equal(clean[1][clean[1] != target], trig[1]):
        raise samples.SampleError(f'{folder}: triggered inputs do not pair with the clean non-target ones')
    return x, trig[0]


@torch.no_grad()
def trigger_terms(model, clean, triggered, target, n=ORACLE_IMAGES):
    """The trigger's conv1 change and its transfer statistic, as the table in the module docstring."""
    split = solution._Split(model.float().eval(), 1)
    hc, ht = split.features(clean[:n]), split.features(triggered[:n])
    d = (ht - hc).flatten(1)
    norm = hc.flatten(1).norm(dim=1)
    if not bool((d.norm(dim=1) > 0).any()):
        raise ValueError('the trigger leaves the conv1 activations unchanged; nothing to measure')
    energy = (ht - hc).pow(2).sum(1).flatten(1)  # (n, H*W)
    cum = energy.sort(1, descending=True).values.cumsum(1) / energy.sum(1, keepdim=True).clamp(min=1e-30)
    pos90 = ((cum < 0.9).sum(1) + 1).float() / energy.shape[1]
    unit = F.normalize(d, dim=1)
    u = F.normalize(unit.mean(0), dim=0)  # the direction _transfer builds from these changes
    goal = torch.full((len(hc),), target, dtype=torch.long)
    with restoring(solution) as hyp:
        hyp['core'] = 1.0  # the cut statistic is wanted whatever the release's exponent
        hyp['refine'] = 0.0  # the trigger's own direction, scored as found (and cut: solution._cuts)
        stats, _, cut = solution._transfer(split, hc, ht - hc, goal, solution.HYP['area'])
    s, c = stats[0].item(), cut[0].item()
    return {'r': (d.norm(dim=1) / norm).median().item(), 'pos90': pos90.median().item(),
            'agree': (unit @ u).mean().item(), 'true_S': s, 'cut': min(1.0, c / s) if s > 0 else 1.0,
            'images': len(hc)}


def found_statistics(folder, sample, model, records):
    """The detector's raw per-class statistics of this sample: from its record if there is one, else run."""
    path = os.path.join(records, samples.name_of(folder) + '.pt') if records else None
    if path and os.path.isfile(path):
        return torch.load(path, weights_only=True)['evidence']['per_class_raw'], 'record'
    ev = solution.evidence(model, sample.num_classes, sample.images, sample.transformation)
    return ev['per_class_raw'], 'run'


def oracle_row(folder, meta, records=None):
    name = samples.name_of(folder)
    row = {'name': name, 'attack': meta.get('attack'), 'asr': meta.get('asr'), 'target': meta.get('target')}
    s = samples.read(folder)
    if s.ground_truth != 0 or row['target'] is None:
        return None
    model = samples.build_model(s.state_dict, s.num_classes)
    pairs = paired_inputs(folder, s.transformation, row['target'])
    if pairs is None:
        return None
    row.update(trigger_terms(model, *pairs, row['target']))
    found, source = found_statistics(folder, s, model, records)
    t = row['target']
    row['found_S'], row['source'] = found[t], source
    row['rank'] = 1 + sum(v > found[t] for v in found)
    row['found_max_other'] = max(v for i, v in enumerate(found) if i != t)
    best = list(found)
    best[t] = max(found[t], row['true_S'])
    row['p_found'], row['p_true'] = solution.max_p_value(found), solution.max_p_value(best)
    return row


def _oracle_all(args):
    """One oracle row per backdoored sample under args.root, printed as it is measured."""
    index = samples.read_index(args.root)
    rows = []
    print(f'{"model":<42} {"asr":>5} {"r":>5} {"pos90":>6} {"agree":>5} {"true_S":>7} {"cut":>5} '
          f'{"found_S":>7} {"max_oth":>7} {"rank":>4} {"p_found":>8} {"p_true":>8}')
    for folder in samples.find(args.root, args.match, args.exact):
        t0 = time.perf_counter()
        try:
            row = oracle_row(folder, index.get(samples.name_of(folder), {}), args.records)
        except (samples.SampleError, ValueError) as e:
            print(f'{samples.name_of(folder):<42} skipped: {e}')
            continue
        if row is None:  # clean, or no triggered inputs
            continue
        row['seconds'] = time.perf_counter() - t0
        rows.append(row)
        asr = '-' if row['asr'] is None else f'{row["asr"]:.0f}'
        print(f'{row["name"]:<42} {asr:>5} {row["r"]:5.2f} {row["pos90"]:6.3f} {row["agree"]:5.2f} '
              f'{row["true_S"]:7.2f} {row["cut"]:5.2f} {row["found_S"]:7.2f} {row["found_max_other"]:7.2f} '
              f'{row["rank"]:>4} {row["p_found"]:8.2g} {row["p_true"]:8.2g}', flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('root')
    ap.add_argument('--match', default='')
    ap.add_argument('--exact', action='store_true', help='--match is the whole sample name')
    ap.add_argument('--records', default=None, help='a bench.record folder to read the found statistics from')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help="a solution.HYP setting")
    ap.add_argument('--json', default=None)
    ap.add_argument('--threads', type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with restoring(solution):  # the --set settings hold for this run only
        override(solution, args.set)
        rows = _oracle_all(args)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
