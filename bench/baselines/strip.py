"""STRIP (Gao et al., ACSAC 2019): an input-level defence. A triggered input keeps its predicted class
when blended with other images (the trigger still dominates), so its predictions have low entropy;
a clean input's class is destroyed by the blend, so its entropy is high.

Per input x: superimpose it on `blends` clean images drawn at random from the defender's small clean
pool, in pixel space x' = clip(w_x x + w_i x_i, 0, 1) with (w_x, w_i) = `weights` (1, 1: the paper's
saturating image addition), and take the mean Shannon entropy (nats) of the softmax over the blends.

Scoring, with the entropy threshold set from clean inputs only: the clean defence inputs are split in
two halves; the threshold is the `percentile` of the first half's entropies; false rejection rate (FRR)
= share of the second half below it (clean inputs wrongly rejected), false acceptance rate (FAR) =
share of triggered inputs at or above it (triggered inputs let through). The seed papers report FAR at
FRR 1%.

This is not a model-level detector: it needs triggered inputs, which the bench's zoo writes beside each
backdoored sample (bench/samples.py, defence_inputs/), and bench/defences.py runs it.
"""
import torch

HYP = {
    'blends': 32,        # clean images blended with each input
    'weights': (1.0, 1.0),  # pixel weights of (input, clean partner) in the superimposition
    'percentile': 1.0,   # threshold: this percentile of the calibration half's entropies
    'batch': 512,        # blended images per forward pass
    'seed': 0,           # seeds the local generator that draws the blend partners
}


@torch.no_grad()
def entropies(net, x, pool, gen, mean, std):
    """Mean prediction entropy of each input of x (N, 3, H, W) superimposed on random images of pool;
    both are normalised model inputs, mean and std (1, 3, 1, 1) the transform's Normalize."""
    out = []
    k, (wx, wi) = HYP['blends'], HYP['weights']
    for xi in x:
        partners = pool[torch.randint(len(pool), (k,), generator=gen)]  # (k, 3, H, W)
        pixels = (wx * (xi.unsqueeze(0) * std + mean) + wi * (partners * std + mean)).clamp(0, 1)
        mixed = (pixels - mean) / std
        logp = torch.cat([net(mixed[i:i + HYP['batch']]).float().log_softmax(1)
                          for i in range(0, k, HYP['batch'])])  # (k, K)
        out.append(-(logp.exp() * logp).sum(1).mean())
    return torch.stack(out) if out else torch.zeros(0)


def evaluate(net, pool, clean, triggered, mean, std):
    """FAR, FRR and the threshold for one model. net: eval-mode classifier on the device of the tensors;
    pool: the defender's clean images (M, 3, H, W); clean: clean inputs (N, 3, H, W); triggered: triggered
    inputs (T, 3, H, W) or None for a clean model (then FAR is None); mean, std: the Normalize (1, 3, 1, 1)."""
    if len(pool) < 2 or len(clean) < 4:
        raise ValueError(f'STRIP needs at least 2 pool images and 4 clean inputs, got {len(pool)} and {len(clean)}')
    gen = torch.Generator().manual_seed(HYP['seed'])
    pool = pool.to(clean.device)
    h_clean = entropies(net, clean, pool, gen, mean, std)
    calib, held = h_clean[0::2], h_clean[1::2]  # interleaved halves: the inputs are class-balanced, in order
    threshold = torch.quantile(calib, HYP['percentile'] / 100).item()
    out = {'threshold': threshold, 'frr': (held < threshold).float().mean().item(), 'n_clean': len(held),
           'entropy_clean': held.mean().item(), 'far': None, 'n_triggered': 0, 'entropy_triggered': None}
    if triggered is not None and len(triggered):
        h_trig = entropies(net, triggered, pool, gen, mean, std)
        out.update(far=(h_trig >= threshold).float().mean().item(), n_triggered=len(h_trig),
                   entropy_triggered=h_trig.mean().item())
    return out
