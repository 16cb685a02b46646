"""Fine-pruning's pruning step (Liu et al., RAID 2018) and GoodNet (seed 004): repair defences.

Pruning: backdoor behaviour tends to live in channels that clean inputs leave dormant. Rank the channels
of the last convolutional stage (the output of `layer4`, the tensor the classifier pools; this
PreActResNet has no final BN/ReLU, so the output can be negative and "activation" is its signed mean)
by their mean activation on clean images, and zero them from the least active up. Stop when clean
accuracy has fallen by each of `drops` points (2, 4, 10) below the unpruned model and report the
clean accuracy and the attack success rate (ASR) there. Only the pruning step is run: the paper's
fine-tuning afterwards needs the training data, which a contest defender does not have.

GoodNet: answer the original model's class when the original and the pruned model agree, and an extra
class N+1 ("poisoned") when they disagree. Its clean accuracy counts N+1 as wrong; its detection rate
is the share of triggered inputs answered N+1.

The clean images are split in two interleaved halves: the first ranks the channels, the second measures
clean accuracy (so the stopping rule is not tuned on the images it is scored on). bench/defences.py
runs this on the zoo's defence inputs.
"""
import torch

HYP = {
    'drops': (2.0, 4.0, 10.0),  # clean-accuracy drops (points) at which to report
    'batch': 256,               # images per forward pass
    'passes': 128,              # channels are pruned in at most this many steps (1 per step at width 16)
}


class ChannelMask:
    """A forward hook on `layer4` that zeroes the channels listed in `pruned`."""

    def __init__(self, net):
        self.pruned = []
        self.handle = net.layer4.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if self.pruned:
            out = out.clone()
            out[:, self.pruned] = 0
        return out

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def _predict(net, x):
    return torch.cat([net(x[i:i + HYP['batch']]).argmax(1) for i in range(0, len(x), HYP['batch'])])


@torch.no_grad()
def channel_order(net, x):
    """layer4 channels from the least to the most active on x (mean over images and positions)."""
    seen = []
    handle = net.layer4.register_forward_hook(lambda m, a, out: seen.append(out.float().mean((0, 2, 3))))
    try:
        for i in range(0, len(x), HYP['batch']):
            net(x[i:i + HYP['batch']])
    finally:
        handle.remove()
    return torch.stack(seen).mean(0).argsort().tolist()


def evaluate(net, clean, labels, triggered=None, target=None):
    """Pruning and GoodNet figures for one model at each accuracy drop.

    net: eval-mode classifier; clean (N, 3, H, W) with labels (N,); triggered (T, 3, H, W) non-target
    inputs carrying the trigger, or None for a clean model; target: the attack's class (None: the class
    the unpruned model gives most triggered inputs). Returns {'base_acc', 'base_asr', 'stages': [...]}."""
    labels = labels.to(clean.device)
    rank_x, eval_x, eval_y = clean[0::2], clean[1::2], labels[1::2]
    if len(rank_x) < 1 or len(eval_x) < 1:
        raise ValueError(f'fine-pruning needs at least 2 clean images, got {len(clean)}')
    has_trig = triggered is not None and len(triggered) > 0
    orig_clean = _predict(net, eval_x)
    orig_trig = _predict(net, triggered) if has_trig else None
    if has_trig and target is None:
        target = int(orig_trig.mode().values)

    def figures(pred_clean, pred_trig):
        out = {'clean_acc': 100 * (pred_clean == eval_y).float().mean().item(), 'asr': None,
               'goodnet_clean_acc': 100 * ((pred_clean == orig_clean) & (orig_clean == eval_y)).float().mean().item(),
               'goodnet_flagged': None}
        if pred_trig is not None:
            out['asr'] = 100 * (pred_trig == target).float().mean().item()
            out['goodnet_flagged'] = 100 * (pred_trig != orig_trig).float().mean().item()
        return out

    base = figures(orig_clean, orig_trig)
    order = channel_order(net, rank_x)
    mask = ChannelMask(net)
    stages, drops = [], list(HYP['drops'])
    try:
        step = max(1, -(-len(order) // HYP['passes']))
        for n in list(range(step, len(order), step)) + [len(order)]:
            mask.pruned = order[:n]
            pred_clean = _predict(net, eval_x)
            acc = 100 * (pred_clean == eval_y).float().mean().item()
            if drops and acc <= base['clean_acc'] - drops[0]:
                now = figures(pred_clean, _predict(net, triggered) if has_trig else None)
                while drops and acc <= base['clean_acc'] - drops[0]:
                    stages.append(dict(now, drop=drops.pop(0), pruned=n, channels=len(order)))
            if not drops:
                break
    finally:
        mask.remove()
    return {'base_acc': base['clean_acc'], 'base_asr': base['asr'], 'target': target, 'stages': stages}
