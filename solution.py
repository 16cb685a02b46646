"""Backdoored-model detector for the Rayan contest (PreActResNet18 image classifiers).

Entry points
    detect(model, num_classes, test_images_folder_address, transformation) -> int
        0 = backdoored, 1 = clean (the encoding of the sample metadata's `ground_truth`).
    backdoor_model_detector(model, num_classes, test_images_folder_address, transformation) -> int
        The official grader's name and convention: 1 = backdoored, 0 = clean (= 1 - detect(...)).
        This file can be uploaded as `main.py` unchanged.
    evidence(...) -> dict
        What detect() decides from: per-class statistics, the null fit, the p-value, the suspected target.

Method (shared-direction transfer in feature space, grown from the seed method of "No Trust Issues Here")
    1. For every class t, take clean images, run them through conv1 only, and treat each image's
       activation as a free variable: optimise it so that the rest of the network puts class t ahead of
       every other class by the largest margin logit_t - max_{k!=t} logit_k (the seed method). Unlike
       the seed, each image may change only a small patch of its activation map (HYP['area'], the
       positions where its change is largest) and only within the clean activations' value range.
    2. The class's shared direction is the normalised mean of its images' unit changes. Each image
       gets that one direction, at each of HYP['alphas'] times its own activation norm; the class
       statistic is the mean over images of softplus(margin), the best over those norms. An all-to-one
       backdoor is one change that sends every input to its target, so its images' changes agree and
       the shared direction transfers. A naturally easy class (on MNIST, adding ink makes an 8) needs a
       different change for each image, so the mean direction washes out. (The seed's statistic, the
       largest margin any image reaches, is kept as HYP['statistic'] = 'margin'; with no area limit it
       calls 3 of 6 clean MNIST models backdoored: RESULTS.md.)
       Before it is scored, the shared direction is itself ascended (_refine, HYP['refine'] = 1: as
       many AdamW steps as the search ran, on the images' summed softplus margins at those norms, kept
       to the `area` share of positions on the patch pass). The mean of the images' own changes starts
       near a trigger's direction but seldom reaches it: the search found 0.1-18 at patch triggers
       whose own direction scores 32-68 (bench.oracle); refined, the CIFAR-10 BadNets target goes
       from 5.4 to 17.4, and on 25 models 19 are right against 17 (RESULTS.md, The refinement).
       The refined patch direction already lies in `area` of the positions, so step 3's core factor
       would be 1 for every class: while the refinement is on, the cut is not scored (_cuts).
       The refined patch direction is kept in one square window of `area` of the positions
       (HYP['window'], _keep_window), not at the `area` strongest positions anywhere: a stamped
       trigger is one contiguous patch, while scattered positions let every class's direction
       collect small local gains. On CIFAR-10 TrojanNN the scattered refinement left the target at
       2.7-8.9 (rank 2-5) beside other classes at 5-10; in one window the target reached 15-22 and
       the largest other class 2.3-5.2 (bench.oracle; RESULTS.md, The window).
       Off by default, HYP['own_norm'] divides each class's transfer statistic by 1 + the mean softplus
       margin of the folder's own images of that class (a class the model recognises with confidence
       is easy to reach naturally); it raised the AUROC on CIFAR-10 and the default zoo but added three
       false positives on GTSRB, whose classes have about 3 images each (RESULTS.md).
       HYP['exclude_own'] builds, refines, scores and lands each class's shared direction from the
       draw's images of other classes only (those of the class start ahead), and HYP['own_floor']
       then gives every class the same floor whatever the draw: its statistic becomes (1 - 1/K) times
       its score on the other classes' images plus 1/K of own_margins(), the mean softplus margin of
       all the folder's clean images of the class. By default both act only where the draw holds
       fewer images than half the classes ('sparse', _when): 8 images of GTSRB's 43 classes on a CPU,
       4 of 10. With the mean over images, a class's own images in the draw give it a share of their
       margins, a floor the null is fitted to; where most classes have no image in the draw, the few
       that have one stand out from a bulk without it, and a clean model is flagged. Left in place
       where most classes have an own image (12 x 25 and 30 x 25 on 10 classes), where it is even
       enough. Adopted under a rule on models it had not seen: on 10 new GTSRB (8 x 6) and CIFAR-10
       (4 x 15) models, 8/10 right with 1/7 clean flagged against 6/10 and 3/7; on 38 earlier ones
       (GTSRB, Tiny-ImageNet at 100 classes, the default zoo, CIFAR-10) 30/38 against 25/38, though
       one clean default-zoo model more was flagged at 4 x 15. Checked after adoption, it costs two
       of the 11 new GTSRB models at 12 x 6 (9/11 against 11/11), where 12 of 43 classes have an own
       image: the half is not yet the right line (RESULTS.md, An even floor where most classes have
       no image in the draw). The floor is what helps there: the own images out
       alone flag clean models harder (3/4 clean GTSRB models at 8 x 6), since with 6
       steps most classes stay at 1e-7 to 1e-3 and a scale-free null calls any one above them an
       outlier; so does HYP['aggregate'] = 'median' (off), the median over images instead of the mean
       (RESULTS.md, The class's own images out of its direction too).
    3. Each class's statistic is multiplied by landing() ** HYP['landing'] (1 by default; 0 turns
       it off): how far its shared direction lands the pushed images from the class's own
       clean images, in penultimate features, relative to how far both lie from the mean image (a
       number in [0, 1]). A naturally easy class's direction is that class's own evidence and lands the images
       on its clean images; a trigger is a feature of its own and lands them off them. On five real
       data sets it cut false positives from 7 of 30 clean models to 4 at exponent 1. The square was
       adopted on 23 new CIFAR-10 and MNIST models and dropped again on 10 new GTSRB ones, where it
       flagged a label-smoothed clean model (RESULTS.md, The landing exponent back to 1).
       The patch test's statistic is also multiplied by min(1, C / S) ** HYP['core'] (0.5; 0 turns
       it off), where C is the same statistic with the shared direction cut to the `area` share of its
       positions where it is strongest, renormalised (_core). A trigger stamped at one place keeps its
       effect cut to that place. A naturally easy class (Fashion-MNIST's sandal, MNIST's 8) is reached
       by changes in a different place in each image, so its mean direction is spread out and cut, it
       loses most of its effect. So, measured, do dense triggers (Blended, SIG) and a CIFAR-10 BadNets
       patch (a network trained with crops and flips may answer its trigger in many places), which is
       why the exponent is 0.5 and not 1. The contrast (step 5) keeps the uncut statistic (RESULTS.md,
       The core factor).
    4. Each statistic, of both passes, is taken as log(1 + statistic) (HYP['log']): in one window a
       trigger's class scores tens to hundreds against the clean classes' 0.3-6, and a clean class
       at 5 among classes at 1 is an outlier to a scale fitted to the others; the log keeps the
       trigger far out and brings that class in (RESULTS.md, The window). The K per-class
       statistics are judged by an exponential null fitted (maximum likelihood, loc = min, scale =
       mean - min) to the K-1 statistics other than the largest; p = 1 - F(max)^K.
       HYP['null'] = 'exact' (off: it lost more backdoors than it cleared false positives, RESULTS.md)
       takes the exact tail of the same fitted statistic instead (exact_tail). HYP['scale_floor'] (off)
       keeps the fitted scale at least that large: a null fitted to statistics that all sit near 0 (few
       steps, each class scored on other classes' images only) has a scale near 0, and any class a
       little above them becomes an outlier. HYP['null_absent'] (on) fits the patch test's null without
       the classes that have no image in a draw where own images count (_absent; 8 images of 10
       classes, a CPU's plan): on MNIST those score near 0 beside the rest, set the loc and widen the
       scale, and hid TrojanNN's target (RESULTS.md, The patch null without the classes the draw leaves
       out: adopted).
    5. HYP['contrast'] (on): steps 1-3 run a second time with no area limit and no value bounds (a
       dense pass), and a second set of statistics, contrast(), asks which class is much easier to
       reach with a dense change than with a patch: D~ / (P~ + 1) ** 2, each pass divided by its mean
       over the classes. A clean-label trigger spread over the whole image (SIG's sinusoid) makes its
       target the class *hardest* to reach with a patch and among the easiest densely; a naturally easy
       class, and the class a dense change reaches best in an adversarially trained model, are
       often easy with a patch too, and the square (HYP['contrast_power']) discounts them.
       HYP['contrast_cap'] (on) also multiplies each class by min(1, S~), S~ its dense statistic before
       step 4's log over the classes' mean: on MNIST the contrast's top class was often just the one a
       patch could not reach, with a dense standing below the mean (RESULTS.md, The contrast capped
       by the dense standing). Both sets go through step 4, and the model is backdoored iff
       1 - (1 - min(p_patch, p_contrast))^2 < P_THRESHOLD (Sidak's correction for taking the smaller
       of two p-values), the file's one tuned constant. HYP['contrast_own'] (0.15) counts the contrast
       only where its top class's clean images are held with at most that share of the classes' mean
       margin (_own_gate: SIG's target, taught through the trigger; MNIST's natural 8 is held as
       firmly as the rest). Elsewhere the contrast still ran, and the correction stays over two tests
       (RESULTS.md, The contrast counted only where its top class is held weakly: adopted).
    6. Off by default, HYP['spike'] adds a third test: per class, spike() asks how far its patch
       direction drives some penultimate unit beyond the folder's clean images (the largest z over
       the units of where it lands them). A trigger is a feature of its own and often has units of
       its own; a naturally easy class lands its images among that class's clean ones. Its K values
       go through step 4 too, and the correction becomes 1 - (1 - min of three)^3 (RESULTS.md).
    7. HYP['confirm'] (0.2 of the time; 0 turns it off) adds the seed's own test as a second test: per
       class, the lower quartile (HYP['confirm_quantile'] 0.25; 1 is the seed's largest, also taken where
       it runs on fewer than HYP['confirm_quantile_min'] = 8 images, whose quartile is nearly their least:
       the 2-4 image plans of 43-200 classes on a CPU) of the margins the images of other classes reach
       when their conv1 + layer1[0] activations are pushed towards the class by sign steps (_margin_search,
       on the seed's schedule of HYP['confirm_steps'] = 100 steps with its warm-up; quantile_margins: a
       trigger moves most images, a naturally easy class only its look-alikes; RESULTS.md, The contrast
       capped by the dense standing), read at the end of the warm-up (HYP['confirm_read'] = 0.1: ten steps,
       each coordinate moved by at most the warm-up's step sizes, about 0.45), judged by step 4's null.
       Off by default, HYP['confirm_trim'] fits that null without the other classes' smallest
       statistics where the test reads the quantile, HYP['confirm_trim_largest'] where it reads the
       largest margin (_margin_trim; null_fit: MNIST's 1 sits 4-5 logits below the rest, sets the loc
       and widens the scale; above its third smallest value an exponential sample is still exponential
       with the same scale). At 2 the first finds more backdoors and flags more clean models, an
       FGSM-trained CIFAR-10 one and MNIST's natural 8 among them; the second tied on 12 fresh models of
       43-200 classes (RESULTS.md).
       Read at the seed's 100 steps, MNIST's 8 is reached as far as a trigger's target on clean models
       (RESULTS.md, The margin test as an alternative); read early, a shortcut the model learned stands out
       and a naturally easy class does not yet, and a class's own images, which start ahead, are left out
       (HYP['confirm_others']). With HYP['combine'] 'either' (the default) the two tests are alternatives,
       p = 1 - (1 - min(p, p_margin))^2 (Sidak); 'both' needs both (p = max(p, p_margin), an
       intersection-union test); 'agree' counts p_margin only where its top class is the patch or the dense
       pass's; 'fisher' is 'either', and where the patch pass leads with the margin test's top class, one
       more alternative, Fisher's combination of the two tests' p-values, F(t) = t (1 - ln t) at
       t = p_patch p_margin (fisher_two; min of it and the rest, the agreement itself the discount).
       HYP['confirm_landing'] q > 0 scores each class by softplus(its statistic) times landing() ** q
       of the image nearest it (it did not discount MNIST's 8). Warp triggers (WaNet) move every pixel
       a little: per-image activations reach them where the release's shared direction often does not.
       On 18 new real models the pair was right on 14 at this CPU's plans and 15 at a GPU's (the
       release alone 9 and 11), with fewer clean models flagged (RESULTS.md, The margin test read at
       the end of its warm-up).
       HYP['early_read'] (0.05; 0 turns it off) runs the same search a second time on the same images
       with the free variable after HYP['early_split'] stages (1: conv1 only), read after that share of
       its schedule (five steps), as a third alternative: p = 1 - (1 - min of three)^3 (_margin_tests,
       combine). Read that early after conv1, a blend's target leads on MNIST, where MNIST's natural 8
       does not yet. On 11 fresh 10-class models it was right on 10 against 9 with no clean model
       flagged, and scored offline on 200 earlier rows it flagged 9 clean models against 10 and found 66
       backdoors against 65 (RESULTS.md, The margin test after conv1 read after five steps).
    8. Off by default, HYP['draws'] (1) runs the release on several draws of the folder's images
       instead of one (each up to HYP['images'] a class, class-balanced: the folder's order, then the
       orders drawn from seeds 1, 2, ..., _draw_seeds), both passes each, and takes the median of
       their p-values: backdoored iff more than half of the draws say so, the one constant unchanged.
       It runs only where each draw still gets the ladder's top rung (_draws). Which images are
       optimised alone moved 5 of 16 verdicts at one plan; three 12-image draws were right on 13 of
       those 16 models against 9 for one 30-image draw, but on 16 new ones (15 counted) on 10
       against 11, with one false positive more (RESULTS.md, Three image draws).

Time: detect() keeps a wall-clock budget (HYP['budget_s'], 40 s) on any hardware. It times one
optimisation step and one forward pass, then picks the number of images and steps from a fixed ladder
so that the whole run (both passes, each given half of the time, the steps and the scoring of each
class's direction after them) fits; on a GPU the full setting fits easily, on a 2-core CPU it is
scaled down: fewer steps first while HYP['plan_images'] (8) images still fit, then 4 images at any
steps, then 2 (_plan). Where half the time would leave each pass a plan of fewer than
HYP['contrast_plan'] images x steps per class (full-width 100-class or 64 px models on a 2-core CPU),
the patch pass runs alone with all of it, as with the contrast off. With HYP['confirm'], that share
of the time is planned for the confirming test (_confirm_plan: read early, its 100-step schedule
kept and fewer images where 30 do not fit; read at the end, steps first as the release; with
HYP['early_read'] its images are priced at both searches' steps) and the release's passes plan with the
rest; the confirming test runs last, until the deadline (the early search after it, each with the share of
that time its steps have). Where the
release's plan is the ladder's top and a share of its time would still be, HYP['draws'] runs that many
image draws (step 8), each pass of each draw with an equal share of the release's time. Where even the
ladder's last rung (2 images x HYP['min_steps'] steps per class) would overshoot with the refinement
(its steps cost two forward-backward passes each per search step: full-width 100-class models on a
2-core CPU), every class runs without it (the core factor's cut is scored instead; 'refine' 0 in
evidence()); where it would overshoot even so, without the cut too (one forward pass less per image
and norm: the core factor is 1, 'core_power' 0; _settings); where the last rung overshoots even then,
the call takes as long as that rung does. On a CPU the classes run in chunks of at most
HYP['cpu_chunk_elems'] elements, sized from the plan's images (_chunk): a larger batch falls out of the
last-level cache and costs 20-45% more per image than the probe measured.

Side effects: none. The caller's model is deep-copied (parameters, buffers, training flag, device and
requires_grad flags stay as they were), the transformation is only called, the global RNG states
(torch, CUDA, numpy, random) are restored, nothing is written, and only the given folder is read.
Same inputs give the same verdict and p-value whenever the plan (images x steps) is the same; the
plan depends only on the measured speed and moves in coarse rungs, but on a loaded machine two runs can
land on different rungs.

Fallbacks (documented, never silent crashes): unreadable, hidden and non-image files are skipped; with
fewer than HYP['min_images'] readable images the detector synthesises smooth noise images at the
transform's size and runs data-free; with 2 classes the null has one point and no test is possible, so
the model is called clean with p = 1.
"""
import copy
import math
import os
import random
import re
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

P_THRESHOLD = 0.08  # the one tuned constant: backdoored iff the p-value of the largest class statistic is below it

HYP = {
    'budget_s': 40.0,        # seconds of wall clock for the whole call, loading included (grader allows 60)
    'max_images': 200,       # images read from the folder at most (class-balanced subset)
    'min_images': 4,         # fewer readable images than this -> data-free mode on synthesised noise
    'images': 30,            # images optimised per class in a draw, at most
    'draws': 1,              # image draws; d > 1 only where each still gets the top rung (_draws), p = the median draw's
    'steps': 25,             # optimisation steps per class, at most
    'min_steps': 2,          # never fewer steps than this (the budget guard may still stop early)
    'plan_images': 8,        # the plan tries every step share with at least this many images before any with fewer, then image count by image count (0: steps first)
    'probe_images': 64,      # images in the timing probe of the plan, at most
    'split': 1,              # stages run before the free variable: conv1 only (the seed: 2, conv1 + layer1[0])
    'mode': 'free',          # 'free': one variable per image (seed); 'universal': one bounded shift per class
    'eps': 0.5,              # universal mode: shift norm / mean activation norm
    'init': 'images',        # start from the clean 'images' or from uniform 'noise' over their pixel range
    'reduce': 'max',         # per class, over its images: the 'max' margin (the seed's) or the 'mean'
    'exclude_own': 'sparse', # per class, leave out the images labelled with that class (they start ahead): from the 'margin' reduction, or the 'transfer' direction and its score ('sparse': only in a draw of fewer images than half the classes, _when)
    'linf': 0.0,             # input space (split 0): L-inf radius around each image, share of the pixel range (0 = none)
    'area': 0.0625,          # free mode: share of the activation map's positions each image may change (0 = all)
    'widen': 0.5,            # with an area: values stay in the clean per-channel range, widened by this share of it
    'statistic': 'transfer', # 'transfer': margins the images' shared direction gives every image; 'margin': the seed's
    'alphas': (0.5, 1.0),    # transfer: the shared direction's norms tried, as shares of each image's activation norm
    'aggregate': 'mean',     # transfer: a class's statistic is the 'mean' over images of their softplus margins, or the 'median'
    'own_norm': False,       # transfer: divide each class's statistic by 1 + its clean images' mean softplus margin
    'own_floor': 'sparse',   # transfer, with exclude_own: a class's statistic is (1 - 1/K) * its score on the other classes' images + 1/K * own_margins (all the folder's images of it) ('sparse': as exclude_own)
    'leave_one_out': False,  # transfer: each image gets the shared direction of the other images' changes, not one that includes its own
    'refine': 1.0,           # transfer: then ascend each class's shared direction itself for this share of the search's steps (0 = off; _refine)
    'window': True,          # refinement on the patch pass: keep the direction in one square window of `area` of the positions (_keep_window), not anywhere
    'core': 0.5,             # transfer, patch test: multiply each class's statistic by min(1, C / S) to this power (0 = off), C its statistic under the shared direction cut to one patch (_core)
    'landing': 1.0,          # transfer: multiply each class's statistic by landing() to this power (0 = off): how far its direction lands from its clean images
    'spike': False,          # transfer: a third test, spike(): how far each class's patch direction drives some penultimate unit beyond the clean images
    'confirm': 0.2,          # share of the planned time for a second test, the seed's largest margin (_margin_search) (0 = off)
    'combine': 'either',     # confirm: 'both' p-values below P_THRESHOLD, or 'either' (Sidak over two; three with early_read), or 'agree' (either, the margin test only where a release pass's top class is its own), or 'fisher' (either, and where the patch pass leads with the margin test's class, Fisher's combination of their p-values too)
    'confirm_landing': 0.0,  # confirm: each class's statistic is softplus(its largest margin) * landing() ** this of the image that reached it (0 = the raw margin)
    'confirm_steps': 100,    # confirm: its schedule's sign steps per class (the seed's 100; read at the end, the plan may take fewer)
    'confirm_others': True,  # confirm: each class's largest margin over the other classes' images only (False: every image, as the seed)
    'confirm_quantile': 0.25, # confirm: a class's statistic is this quantile of the margins over those images (1 = the largest, the seed's; 0.25 = the lower quartile: a trigger moves most images, a naturally easy class its look-alikes)
    'confirm_quantile_min': 8, # confirm: with fewer images than this in its plan, the largest margin instead of the quantile (a quartile of 2-4 margins is nearly their least; 0 = always the quantile)
    'confirm_trim': 0,       # confirm: its null is fitted without the other classes' this many smallest statistics, where it reads the quantile (null_fit; 0 = all of them)
    'confirm_trim_largest': 0, # confirm: the same, where it reads each class's largest margin (fewer than confirm_quantile_min images; _margin_trim)
    'confirm_read': 0.1,     # confirm: the share of its step schedule after which the margins are read (1 = the seed's end; 0.1 = the end of the warm-up)
    'early_read': 0.05,      # confirm: a third test, the margin test again at HYP['early_split'], read after this share of its schedule (0.05: five of 100 steps; 0 = off; _margin_tests)
    'early_split': 1,        # confirm, early_read: that search's split (stages before its free variable; 1: conv1 only)
    'early_pool': False,     # confirm, early_read: the two margin searches as one test, their standardised statistics summed per class (pooled_margins), one correction fewer
    'null_absent': True,     # the patch test: where the draw leaves some classes without an image (and their own images count), fit its null without those classes (_absent)
    'confirm_min': 2,        # confirm: the fewest images it runs with; where its share fits fewer, it is skipped and the release has the whole time (0: it always runs, on the smallest plan where none fits, cut by the deadline)
    'log': True,             # transfer: the class statistic is log(1 + that product), a lighter tail for the exponential null
    'snapshots': (1.0,),     # transfer: the statistic is the mean of _transfer taken after these shares of the steps
    'null': 'plug-in',       # p of the largest statistic: 'plug-in' 1 - F(max)^K (the seed's), or 'exact' (exact_tail)
    'scale_floor': 0.0,      # the null's fitted scale is at least this, in the statistics' own units (log(1 + x)): the least spread that counts (0 = none)
    'contrast': True,        # a second, dense pass (area 0), and contrast() of the two tested too (_contrasted: needs an area, 'transfer')
    'contrast_power': 2.0,   # contrast: q in D~ / (P~ + 1) ** q; the larger, the more a class that is easy with a patch too is discounted
    'contrast_cap': True,    # contrast: times min(1, S~) too, S~ the dense statistic before the log over its mean: a class below the mean dense standing is discounted (a trigger's target is reached densely at least as well as the average class)
    'contrast_own': 0.15,    # contrast: counted only where its top class's clean images hold at most this share of the classes' mean own margin (_own_gate; 0 = always counted)
    'contrast_plan': 30,     # contrast: only when each pass's plan has at least this many images x steps per class (2 x 15, the least RESULTS.md measured), else the patch pass alone
    'lr': 0.1,               # peak AdamW learning rate on the activation
    'lr_final': 0.001,       # cosine decay ends here
    'warmup': 0.1,           # share of steps with linear warm-up
    'weight_decay': 0.01,    # AdamW default
    'chunk_elems': 2 ** 26,  # largest free-variable tensor (elements) optimised at once, bounds memory
    'cpu_chunk_elems': 2 ** 22,  # on a CPU, at most this many at once: a batch past the last-level cache costs 20-45% more per image (_chunk)
    'noise_size': 32,        # data-free mode: image side when the transform names no size
    'image_seed': None,      # which images the first draw optimises: None = the folder's order; an int = another class-balanced draw (later draws: _draw_seeds)
}

CHOICES = {'mode': ('free', 'universal'), 'init': ('images', 'noise'), 'reduce': ('max', 'mean'),
           'exclude_own': (False, True, 'sparse'), 'aggregate': ('mean', 'median'), 'statistic': ('transfer', 'margin'), 'own_norm': (True, False), 'own_floor': (False, True, 'sparse'),
           'log': (False, True), 'spike': (False, True), 'contrast': (False, True), 'leave_one_out': (False, True),
           'window': (False, True), 'null': ('plug-in', 'exact'), 'combine': ('both', 'either', 'agree', 'fisher'),
           'confirm_others': (False, True), 'contrast_cap': (False, True), 'early_pool': (False, True),
           'null_absent': (False, True)}

IMAGE_EXTS = {'.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.gif', '.tif', '.tiff', '.webp'}

# -----------------------------------------------------------------------------
# Reading the image folder


def _list_images(folder):
    """Image files in `folder` as (path, label) sorted by index; label -1 when the name has none."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f'test_images_folder_address must be a path, got {type(folder).__name__}')
    if not os.path.isdir(folder):
        raise ValueError(f'test_images_folder_address {folder!r} is not a folder')
    items = []
    with os.scandir(folder) as entries:
        for e in entries:
            stem, ext = os.path.splitext(e.name)
            if e.name.startswith('.') or ext.lower() not in IMAGE_EXTS or not e.is_file():
                continue
            m = re.fullmatch(r'(\d+)_(\d+)', stem)
            index, label = (int(m[1]), int(m[2])) if m else (math.inf, -1)
            items.append((index, e.name, e.path, label))
    items.sort()
    return [(path, label) for _, _, path, label in items]


def _balanced_subset(items, n):
    """At most n items, round-robin over labels so every class is represented; deterministic."""
    if len(items) <= n:
        return items
    by_label = {}
    for it in items:
        by_label.setdefault(it[1], []).append(it)
    queues, out = list(by_label.values()), []
    depth = 0
    while len(out) < n:
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return out


def _open_rgb(path):
    """A PIL RGB image, or None if the file cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):  # 16-bit or float grey: rescale to 8 bits
                a = np.asarray(im, dtype=np.float64)
                lo, hi = a.min(), a.max()
                a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
                im = Image.fromarray(a.astype(np.uint8), 'L')
            return im.convert('RGB')
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _to_chw(out, where):
    """Coerce a transform's output to a float (3, H, W) tensor."""
    if isinstance(out, Image.Image):
        out = torch.from_numpy(np.array(out.convert('RGB'), dtype=np.float32) / 255).permute(2, 0, 1)
    elif isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not torch.is_tensor(out):
        raise TypeError(f'transformation returned {type(out).__name__} for {where}; expected a tensor or image')
    out = out.float()
    if out.dim() == 2:
        out = out.unsqueeze(0)
    if out.dim() != 3:
        raise ValueError(f'transformation returned shape {tuple(out.shape)} for {where}; expected (C, H, W)')
    if out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    elif out.shape[0] == 4:
        out = out[:3]
    if out.shape[0] != 3:
        raise ValueError(f'transformation returned {out.shape[0]} channels for {where}; the model takes 3')
    return out


def _apply(transformation, img, where):
    if transformation is None:  # documented fallback: raw pixels in [0, 1] at the image's own size
        return _to_chw(img, where)
    if not callable(transformation):
        raise TypeError(f'transformation must be callable, got {type(transformation).__name__}')
    try:
        out = transformation(img)
    except Exception as e:  # a caller's transform can raise anything; say where it failed
        raise ValueError(f'transformation failed on {where}: {type(e).__name__}: {e}') from e
    return _to_chw(out, where)


def _stack(tensors):
    """Stack (3, H, W) tensors; sizes that differ from the most common one are resized to it."""
    sizes = [tuple(t.shape[1:]) for t in tensors]
    common = max(set(sizes), key=sizes.count)
    fixed = [t if tuple(t.shape[1:]) == common else
             F.interpolate(t[None], size=common, mode='bilinear', align_corners=False)[0] for t in tensors]
    return torch.stack(fixed)  # (N, 3, H, W)


def _transform_size(transformation):
    """The side length a transform's Resize names, else HYP['noise_size']."""
    for t in getattr(transformation, 'transforms', [transformation]):
        size = getattr(t, 'size', None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and len(size) in (1, 2) and all(isinstance(s, int) for s in size):
            return max(size)
    return HYP['noise_size']


def _noise_images(transformation, n, gen):
    """Data-free fallback: smooth random colour images passed through the caller's transform."""
    side = _transform_size(transformation)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    fine = torch.rand(n, 3, side, side, generator=gen)
    imgs = 0.7 * F.interpolate(coarse, size=(side, side), mode='bilinear', align_corners=False) + 0.3 * fine
    out = []
    for i in range(n):
        arr = (imgs[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out.append(_apply(transformation, Image.fromarray(arr, 'RGB'), f'synthesised image {i}'))
    return _stack(out), torch.full((n,), -1, dtype=torch.long)


def load_images(folder, transformation, gen=None):
    """Clean images of the folder as (x (N, 3, H, W), labels (N,), data_free: bool)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    items = _balanced_subset(_list_images(folder), HYP['max_images'])
    xs, ys = [], []
    for path, label in items:
        img = _open_rgb(path)
        if img is not None:
            xs.append(_apply(transformation, img, os.path.basename(path)))
            ys.append(label)
    if len(xs) < HYP['min_images']:
        x, y = _noise_images(transformation, max(HYP['images'], HYP['min_images']), gen)
        return x, y, True
    return _stack(xs), torch.tensor(ys, dtype=torch.long), False

# -----------------------------------------------------------------------------
# The model, split into a stem (frozen input side) and a head (where the free variable goes)

REQUIRED = ('conv1', 'layer1', 'layer2', 'layer3', 'layer4', 'linear')


def _check_model(model, num_classes):
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    missing = [n for n in REQUIRED if not isinstance(getattr(model, n, None), nn.Module)]
    if missing:
        raise ValueError(f'model lacks the PreActResNet18 sub-modules {missing}')
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f'num_classes must be an int, got {type(num_classes).__name__}')
    if num_classes < 2:
        raise ValueError(f'num_classes must be at least 2, got {num_classes}')
    out = getattr(model.linear, 'out_features', None)
    if out is not None and out != num_classes:
        raise ValueError(f'num_classes is {num_classes} but the model has {out} outputs')
    return model


def _device_for(model):
    p = next(model.parameters(), None)
    if p is not None and p.is_cuda:
        return p.device
    return torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')


class _Split:
    """The network as stages [conv1, blocks of layer1..layer4]; stem = first `split` stages."""

    def __init__(self, net, split):
        stages = [net.conv1]
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            layer = getattr(net, name)
            stages += list(layer) if isinstance(layer, nn.Sequential) else [layer]
        self.stem, self.rest = stages[:split], stages[split:]
        self.pool = getattr(net, 'avgpool', None) or nn.AdaptiveAvgPool2d((1, 1))
        self.linear = net.linear

    def features(self, x):
        for s in self.stem:
            x = s(x)
        return x

    def pooled(self, h):
        """The penultimate features: the rest of the network up to the linear head."""
        for s in self.rest:
            h = s(h)
        return self.pool(h).flatten(1)

    def logits(self, h):
        return self.linear(self.pooled(h))

# -----------------------------------------------------------------------------
# Per-class statistic: the largest margin the head can be pushed to


def margin(logits, target):
    """logit_t - max_{k != t} logit_k, per row; target (N,) long."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float('-inf')).max(1).values
    return own - others


def _lr_at(step, steps):
    warm = max(1, int(HYP['warmup'] * steps))
    if step < warm:
        return HYP['lr'] * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return HYP['lr_final'] + 0.5 * (HYP['lr'] - HYP['lr_final']) * (1 + math.cos(math.pi * t))


def _reduce(m, keep):
    """Per-class statistic from the margins of its n images (k, n) -> (k,), over the images `keep`
    (k, n) marks."""
    if HYP['reduce'] == 'max':
        return m.masked_fill(~keep, float('-inf')).amax(1)
    return _over(m, keep)


def _area():
    """The share of positions each image may change: HYP['area'] in free mode, else 0 (no limit)."""
    return HYP['area'] if HYP['mode'] == 'free' and 0 < HYP['area'] < 1 else 0


def _contrasted():
    """Whether the dense pass and contrast() run: HYP['contrast'], and only where there is a patch
    pass to contrast with (free mode with an area) and its statistics are >= 0 ('transfer')."""
    return HYP['contrast'] and bool(_area()) and HYP['statistic'] == 'transfer'


def _project(var, start, bounds, area):
    """In place, after an optimisation step: values back inside `bounds` (if any), then, with an
    `area`, each image keeps its change only at that share of positions where the change (L2 over
    channels) is largest."""
    if bounds is not None:
        torch.maximum(torch.minimum(var, bounds[1]), bounds[0], out=var)
    if area:
        d = var - start
        size = d.norm(dim=1).flatten(1)  # (B, H*W)
        kth = size.topk(max(1, round(area * size.shape[1])), dim=1).values[:, -1:]
        var.copy_(start + d * (size >= kth).view(len(d), 1, *d.shape[2:]))


def _core(u, shape, area):
    """The directions u (k, m, D) cut to the `area` share of positions (of the map `shape`, (C, H, W))
    where each has the most energy (squared L2 over channels), renormalised: one patch at one place."""
    kept = u.reshape(-1, u.shape[2]).clone()
    _keep_area(kept, shape, area)  # exactly that many positions, ties or not
    return F.normalize(kept, dim=1).view(u.shape)


def _over(x, keep, how='mean'):
    """The mean (or, `how` 'median', the median) of x (k, n, ...) over its n images, per class, over
    the images `keep` (k, n) marks (None: all of them); the median only of margins (k, n)."""
    if how == 'median':
        return torch.nanquantile(x if keep is None else x.masked_fill(~keep, float('nan')), 0.5, dim=1)
    if keep is None:
        return x.mean(1)
    w = keep.to(x.dtype).view(*keep.shape, *[1] * (x.dim() - 2))
    return (x * w).sum(1) / w.sum(1)


def _transfer_margins(split, h0, delta, target, area=0.0, refine=0, core=None, keep=None):
    """Per norm alpha in HYP['alphas']: each image's softplus(margin) (k, n) when every image gets its class's
    shared direction (the normalised mean of its images' unit changes) at alpha times its own activation
    norm, and the pushed images' mean penultimate feature per class (k, F). delta (k*n, C, H, W) are the
    optimised changes, grouped by class; target (k*n,). With `refine` > 0 steps, the shared direction
    is ascended directly before it is scored (_refine). Where _cuts(area, refine, core) (the core factor on
    the patch pass, no refinement steps), a third entry per norm: the softplus margins (k, n) under the
    direction cut to one patch (_core); else None. keep (k, n), where given: the images each class's
    shared direction is built, refined and landed from (HYP['exclude_own']); the margins are every image's."""
    n = len(h0)
    k = len(delta) // n
    unit = F.normalize(delta.flatten(1), dim=1).view(k, n, -1)  # (k, n, D)
    if HYP['leave_one_out'] and n > 1:  # each image gets the mean of the other images' changes
        kept = unit if keep is None else unit * keep[:, :, None].to(unit.dtype)
        u = F.normalize(kept.sum(1, keepdim=True) - kept, dim=2)  # (k, n, D)
    else:
        u = F.normalize(_over(unit, keep), dim=1)[:, None, :]  # (k, 1, D)
        u = _refine(split, h0, u, target, area, refine, keep)
    cut = _core(u, h0.shape[1:], area) if _cuts(area, refine, core) else None
    norm = h0.flatten(1).norm(dim=1)  # (n,)

    def push(direction, alpha):
        h = h0.flatten(1)[None] + alpha * norm[None, :, None] * direction  # (k, n, D)
        feats = split.pooled(h.view(k * n, *h0.shape[1:]))
        return F.softplus(margin(split.linear(feats), target)).view(k, n), _over(feats.view(k, n, -1), keep)
    out = []
    for alpha in HYP['alphas']:
        margins, mean_feats = push(u, alpha)
        out.append((margins, mean_feats, None if cut is None else push(cut, alpha)[0]))
    return out


def _keep_area(v, shape, area):
    """In place: each row of v (k, D) keeps its values at the `area` share of the positions of the map
    `shape` (C, H, W) where it has the most energy (squared L2 over channels), zero elsewhere."""
    energy = v.view(len(v), shape[0], -1).pow(2).sum(1)  # (k, H*W)
    top = energy.topk(max(1, round(area * energy.shape[1])), dim=1).indices
    v.view(len(v), shape[0], -1).mul_(torch.zeros_like(energy).scatter_(1, top, 1.0)[:, None, :])


def _keep_window(v, shape, area):
    """In place: each row of v (k, D) keeps its values in the one square window of side
    round(sqrt(`area` * H * W)) of the map `shape` (C, H, W) that holds most of its energy (squared L2
    over channels), zero elsewhere: one contiguous patch, as a stamped trigger is, rather than the
    `area` strongest positions wherever they lie (_keep_area)."""
    c, h, w = shape
    side = max(1, min(h, w, round(math.sqrt(area * h * w))))
    energy = v.view(len(v), c, h, w).pow(2).sum(1, keepdim=True)  # (k, 1, H, W)
    sums = F.avg_pool2d(energy, side, stride=1).flatten(1)  # (k, (H-side+1)*(W-side+1)): each window's energy
    best = sums.argmax(1, keepdim=True)  # (k, 1): the top-left corner, as row * (W-side+1) + column
    r0, c0 = best // (w - side + 1), best % (w - side + 1)
    rows, cols = torch.arange(h, device=v.device), torch.arange(w, device=v.device)
    in_rows, in_cols = (rows >= r0) & (rows < r0 + side), (cols >= c0) & (cols < c0 + side)  # (k, H), (k, W)
    v.view(len(v), c, h, w).mul_((in_rows[:, :, None] & in_cols[:, None, :]).to(v.dtype)[:, None])


def _refine(split, h0, u, target, area, steps, keep=None):
    """Each class's shared direction u (k, 1, D), ascended directly: `steps` AdamW steps
    (_refine_steps of the pass's own) on the sum over the norms
    in HYP['alphas'] of the images' softplus margins when all get the one direction, kept to the `area`
    share of positions after each step on the patch pass. The mean of the images' own changes is a start
    that a trigger's direction is near but seldom at: each image's search finds its own nearest way to
    the class, and the mean of those washes the one change all of them share out. keep (k, n), where
    given: the images whose margins each class's objective sums. Returns (k, 1, D)."""
    k, n = len(u), len(h0)
    if steps < 1:
        return u
    w = torch.ones(k, n, device=h0.device) if keep is None else keep.to(h0.dtype)
    norm = h0.flatten(1).norm(dim=1)[None, :, None]  # (1, n, 1)
    scale = u.shape[2] ** 0.5  # unit rows -> entries of size about 1, where the learning rate is meant
    with torch.enable_grad():
        v = (u[:, 0] * scale).clone().requires_grad_(True)  # (k, D)
        opt = torch.optim.AdamW([v], lr=HYP['lr'], weight_decay=0.0)
        for step in range(steps):
            for g in opt.param_groups:
                g['lr'] = _lr_at(step, steps)
            opt.zero_grad(set_to_none=True)
            for alpha in HYP['alphas']:  # one backward per norm: the gradients add, the memory of one step
                h = h0.flatten(1)[None] + alpha * norm * F.normalize(v, dim=1)[:, None, :]  # (k, n, D)
                (-(F.softplus(margin(split.logits(h.view(k * n, *h0.shape[1:])), target)).view(k, n) * w).sum()).backward()
            opt.step()
            if area:
                with torch.no_grad():
                    (_keep_window if HYP['window'] else _keep_area)(v, h0.shape[1:], area)
    return F.normalize(v.detach(), dim=1)[:, None, :]


def _refine_steps(steps, refine):
    """The refinement's steps for a pass of `steps` optimisation steps: the share `refine` of them, rounded."""
    return int(round(refine * steps))


def _transfer(split, h0, delta, target, area=0.0, refine=0, core=None, keep=None):
    """Per class: the mean over images of softplus(margin) under its shared direction (_transfer_margins),
    the best over HYP['alphas'] (a trigger's strength in feature space is not known in advance: a patch is
    a large local change, a blend a small one everywhere). Returns the statistics (k,) and, at the norm
    that gave each, the pushed images' mean penultimate feature (k, F): where the class's direction lands
    them. Third: where _cuts(area, refine, core), each class's best mean margin over the norms under
    its direction cut to one patch (k,), else None. keep (k, n), where given: the images each class is
    built and scored on (HYP['exclude_own']: those of other classes)."""
    out = _transfer_margins(split, h0, delta, target, area, refine, core, keep)
    how = HYP['aggregate']
    stats, landed = _best_norm([(_over(margins, keep, how), mean_feats) for margins, mean_feats, _ in out])
    cut = None if out[0][2] is None else _best_cut([_over(c, keep, how) for _, _, c in out])
    return stats, landed, cut


def _best_cut(per_alpha):
    """Per class, the largest cut statistic over the norms; per_alpha is [statistics (k,)], one per alpha."""
    return torch.stack(per_alpha).amax(0)


def core_factors(stats, cut):
    """Per class, min(1, C / S) ** HYP['core'] of its statistic S and its statistic C under the
    direction cut to one patch (_core); all 1 when cut is None. A trigger is one patch at one place,
    so its direction keeps its effect when cut to its strongest positions; a naturally easy class is
    reached by a change in a different place in each image, and its mean direction, spread over
    many positions, loses most of its effect when cut."""
    if cut is None or not HYP['core']:
        return [1.0] * len(stats)
    return [min(1.0, c / s) ** HYP['core'] if s > 0 else 1.0 for s, c in zip(stats, cut)]


def _best_norm(per_alpha):
    """Per class, the largest statistic over the norms, and the landing point (mean penultimate feature)
    at the norm that gave it; per_alpha is [(statistics (k,), landing points (k, F))], one per alpha."""
    best, landed = torch.zeros_like(per_alpha[0][0]), None
    for stat, mean_feats in per_alpha:
        landed = mean_feats if landed is None else torch.where((stat > best)[:, None], mean_feats, landed)
        best = torch.maximum(best, stat)  # NaN propagates: a model with non-finite outputs is caught
    return best, landed


def _landing_factors(landed, feats, y, num_classes):
    """Per class, landing() ** HYP['landing'] of the landing points (a list of (chunk, F) tensors); all 1
    when the exponent is 0."""
    if HYP['landing'] <= 0:
        return [1.0] * num_classes
    return [f ** HYP['landing'] for f in landing(torch.cat(landed), feats, y, num_classes)]


def _clean_features(split, h_all, labels, num_classes, batch=64):
    """Penultimate features (N', F) of the folder's images labelled with a class 0..K-1, and those
    labels (N',); None, None when there are none (a data-free run)."""
    ok = (labels >= 0) & (labels < num_classes)
    h, y = h_all[ok.to(h_all.device)], labels[ok]
    if len(y) == 0:
        return None, None
    with torch.no_grad():
        return torch.cat([split.pooled(h[i:i + batch]) for i in range(0, len(y), batch)]), y.to(h_all.device)


def _class_means(values, y, num_classes):
    """Per class, the mean of the rows of values (N, ...) labelled with it (0 for a class with no row),
    and how many rows each class has."""
    like = dict(dtype=values.dtype, device=values.device)
    count = torch.zeros(num_classes, **like).index_add_(0, y, torch.ones(len(y), **like))
    total = torch.zeros((num_classes,) + values.shape[1:], **like).index_add_(0, y, values)
    return total / count.clamp(min=1).view(-1, *[1] * (values.dim() - 1)), count


def own_margins(split, feats, y, num_classes):
    """Per class: the mean softplus margin the model gives the folder's own clean images of that class,
    from their penultimate features and labels (_clean_features); 0 for a class with no image."""
    if feats is None:
        return [0.0] * num_classes
    with torch.no_grad():
        m = F.softplus(margin(split.linear(feats), y)).double()
    return _class_means(m, y, num_classes)[0].tolist()


def landing(landed, feats, y, num_classes):
    """Per class t: how far its direction lands the pushed images from the class's own clean images,
    |landed_t - c_t| / (|landed_t - m| + |c_t - m|), in penultimate features, where c_t is the mean
    over the folder's images of class t and m the mean over all of them. It lies in [0, 1]: near 0 when
    the images land on the class's own images (a naturally easy class: its direction is that class's
    own evidence), (s - 1) / (s + 1) when they land s times as far out along the same line, and 0.7 to
    1 when they land off it, on a feature of their own, as a trigger's do. 1 for a class with no image
    and in a data-free run (feats None)."""
    if feats is None:
        return [1.0] * num_classes
    with torch.no_grad():
        c, count = _class_means(feats, y, num_classes)  # (K, F)
        mean = feats.mean(0)
        apart = (landed - mean).norm(dim=1) + (c - mean).norm(dim=1)
        far = (landed - c).norm(dim=1) / apart.clamp(min=1e-12)
        return torch.where(count > 0, far, torch.ones_like(far)).tolist()


def _when(key, n, num_classes):
    """HYP[key] (exclude_own, own_floor) for a draw of n images of a num_classes-class model: True, False,
    or for 'sparse' whether the draw holds fewer images than half the classes. With the mean over images
    only the classes with an image in the draw get a share of their own images' margins (a floor); where
    most classes have none, the few that have one stand out from a bulk without it, while where most
    have one, those without only lower the null's loc and raise its scale (RESULTS.md)."""
    v = HYP[key]
    return 2 * n < num_classes if v == 'sparse' else v


def _absent(labels, num_classes):
    """The classes the patch test's null leaves out (HYP['null_absent']; () when off): those without an image
    in a draw of `labels` that holds images of some classes but not all, where each class's own images
    count (exclude_own resolved False for the draw). The mean over the images then gives every class with
    an image in the draw one image that starts ahead; those without one score near 0 (MNIST, 8 images of
    10 classes) and would set the null's loc and widen its scale. The contrast keeps them: there they lead
    (a patch reaches them least), a different trap, which its own gate (_own_gate) answers."""
    if not HYP['null_absent'] or _when('exclude_own', len(labels), num_classes):
        return ()
    present = {int(v) for v in labels}
    absent = tuple(c for c in range(num_classes) if c not in present)
    return absent if len(absent) < num_classes else ()


def _class_statistics(split, h0, labels, classes, steps, deadline, bounds=None, area=None, refine=None, core=None,
                      exclude=False):
    """For each class in `classes`, push the n activations h0 (n, C, H, W) towards it; its statistic.
    refine: the refinement's share of the steps (None: HYP['refine']; evidence() may turn it off).
    core: the core factor's exponent, whose cut is scored where it is not 0 (None: HYP['core']; _cuts).
    exclude: leave each class's own images out of its statistic (_every_class resolves HYP['exclude_own']).

    mode 'free': every image's activation is its own free variable (the seed method), changed at most
    at `area` of its positions (None: HYP['area']; 0: all). mode 'universal': one shift per class, shared by all images, of
    L2 norm at most eps times the images' mean activation norm.
    statistic 'margin': the largest margin reached (_reduce over the images, best over the steps).
    statistic 'transfer': see _transfer; a backdoor trigger is one change that works for every image,
    while a naturally easy class (add ink to make an 8) needs a different change for each image."""
    n, k = h0.shape[0], len(classes)
    target = torch.tensor(classes, device=h0.device).repeat_interleave(n)
    keep = torch.ones(k, n, dtype=torch.bool, device=h0.device)
    if exclude:  # a class with no image of another class keeps all of them
        keep = labels.to(h0.device)[None, :] != target.view(k, n)
        keep[~keep.any(1)] = True
    own_free = keep if exclude else None  # transfer: the images each class is built and scored on
    start = h0.repeat(k, 1, 1, 1)  # (k*n, C, H, W): the clean activations, one copy per class
    universal = HYP['mode'] == 'universal'
    area = _area() if area is None else area
    refine = HYP['refine'] if refine is None else refine
    if universal:
        var = torch.zeros((k,) + h0.shape[1:], device=h0.device, requires_grad=True)  # (k, C, H, W)
        radius = HYP['eps'] * h0.flatten(1).norm(dim=1).mean()
    if bounds is not None and HYP['split'] == 0 and HYP['linf']:  # input space: an L-inf ball if asked
        r = HYP['linf'] * (bounds[1] - bounds[0])
        bounds = torch.maximum(bounds[0], start - r), torch.minimum(bounds[1], start + r)
    if not universal:  # the free variables start as that copy; optimised in place when start is not read again
        keep_start = area or HYP['statistic'] == 'transfer'  # both read start after the steps begin
        var = (start.clone() if keep_start else start).requires_grad_(True)

    def current():
        return start + var.repeat_interleave(n, 0) if universal else var

    opt = torch.optim.AdamW([var], lr=HYP['lr'], weight_decay=0.0 if universal else HYP['weight_decay'])
    transfer = HYP['statistic'] == 'transfer'
    best = torch.full((k,), float('-inf'), device=h0.device)  # statistic 'margin': the best over the steps
    marks = {max(1, round(share * steps)) for share in HYP['snapshots']} if transfer else set()
    taken, done = [], 0  # transfer: (statistics, landing points, cut statistics) at each mark; steps run so far

    def snapshot():
        return _transfer(split, h0, current() - start, target, area, _refine_steps(done, refine), core, own_free)  # a deadline stop refines less too
    for step in range(steps):
        for g in opt.param_groups:
            g['lr'] = _lr_at(step, steps)
        m = margin(split.logits(current()), target)  # (k*n,)
        if not transfer:
            best = torch.maximum(best, _reduce(m.detach().view(k, n), keep))
        opt.zero_grad(set_to_none=True)
        (-m.sum()).backward()
        opt.step()
        with torch.no_grad():
            if universal:  # project each class's shift back onto the ball
                norms = var.flatten(1).norm(dim=1).clamp(min=1e-12)
                var.mul_((radius / norms).clamp(max=1.0).view(-1, 1, 1, 1))
            else:
                _project(var, start, bounds, area)
            done = step + 1
            if done in marks:
                taken.append(snapshot())
        if time.monotonic() > deadline:
            break
    with torch.no_grad():
        if transfer:
            if done not in marks:  # the last state counts when no mark took it (the deadline stopped the loop)
                taken.append(snapshot())
            stats, landed, cut = (None if v[0] is None else torch.stack(v).mean(0) for v in zip(*taken))
            return stats.tolist(), landed, None if cut is None else cut.tolist()
        best = torch.maximum(best, _reduce(margin(split.logits(current()), target).view(k, n), keep))
    return best.tolist(), None, None


def _step_seconds(split, h_all, num_classes, chunk, bounds):
    """(seconds per image per optimisation step, seconds per image per forward pass without gradients),
    timed on a real-size batch: two steps, projection included (the first pays for lazy initialisation),
    then one forward of the same batch (the cost of scoring a direction, _transfer)."""
    n_max = min(HYP['images'], len(h_all))
    reps = max(1, min(chunk, num_classes, HYP['probe_images'] // n_max))  # a real-size batch, capped in cost
    start = h_all[:n_max].repeat(reps, 1, 1, 1)
    var = start.clone().requires_grad_(True)
    opt = torch.optim.AdamW([var], lr=HYP['lr'])
    target = torch.zeros(len(var), dtype=torch.long, device=h_all.device)

    def sync():
        if h_all.is_cuda:
            torch.cuda.synchronize()
    for _ in range(2):
        t0 = time.monotonic()
        opt.zero_grad(set_to_none=True)
        margin(split.logits(var), target).sum().backward()
        opt.step()
        if HYP['mode'] == 'free':
            with torch.no_grad():
                _project(var, start, bounds, _area())
        sync()
        per_image_step = (time.monotonic() - t0) / len(var)
    t0 = time.monotonic()
    with torch.no_grad():
        split.logits(var)
    sync()
    return per_image_step, (time.monotonic() - t0) / len(var)


def _refinings(refine):
    """Forward-backward passes per image and class of the refinement (_refine) per search step, at the
    share `refine` of the steps: one per norm in HYP['alphas'] for each refinement step, at each
    snapshot; 0 when off (refine 0, or a statistic that is not refined)."""
    if HYP['statistic'] != 'transfer' or HYP['leave_one_out']:
        return 0.0
    return refine * len(HYP['alphas']) * len(set(HYP['snapshots']))


def _scorings(area, refine, core=None):
    """Forward passes per image and class after a pass's steps: _transfer scores the shared direction at
    each norm in HYP['alphas'] (twice where the core factor's cut is scored, _cuts) at each snapshot; the
    'margin' statistic reads the final margins once."""
    if HYP['statistic'] != 'transfer':
        return 1
    marks = len(set(HYP['snapshots']))
    return len(HYP['alphas']) * (2 if _cuts(area, refine, core) else 1) * marks


def _cuts(area, refine, core=None):
    """Whether the core factor's cut direction is scored: its exponent `core` (None: HYP['core']) not 0,
    on a pass with an `area`, and no refinement (`refine`, its share of the steps or its steps: 0 = none;
    _refinings). A refined patch direction already lies in one patch, so its cut is itself and the
    factor exactly 1: scoring it would only cost time."""
    return bool((HYP['core'] if core is None else core) and area) and not _refinings(refine)


def _plan(step_seconds, seconds, num_classes, n_images, score_seconds=0.0, max_steps=None):
    """Images and steps per class that fit `seconds`, from a fixed ladder (coarse, so a run repeats): each
    image costs `step_seconds` per step and `score_seconds` once, after the steps (_scorings). The
    ladder's top is HYP['steps'] steps, or `max_steps`. It goes down the steps before the images, but
    tries every step count with HYP['plan_images'] images or more before any rung with fewer, and below
    that every step count with one image count before any with fewer (4 x 2 before 2 x 6): a draw of
    n class-balanced images gives n classes an image that starts ahead, so with 2 or 4 images of 10
    or more classes those few classes stand out (RESULTS.md, More images before more steps; Four
    images before two)."""
    n_max = min(HYP['images'], n_images)
    per_class = seconds / num_classes
    top = HYP['steps'] if max_steps is None else max_steps
    sizes = _sizes(n_images)
    first = min(HYP['plan_images'], n_max)  # every step share with at least this many (or all there are) before fewer
    for group in [[n for n in sizes if n >= first]] + [[n] for n in sizes if n < first]:
        for share in (1, 0.6, 0.4, 0.25, 0.1, 0.05):
            steps = max(HYP['min_steps'], round(share * top))
            for n in group:
                if _rung_seconds(n, steps, step_seconds, score_seconds) <= per_class:
                    return n, steps
    return _floor(n_images)


def _rung_seconds(n, steps, step_seconds, score_seconds):
    """Seconds per class of a rung, n images x `steps` steps: each image's steps, then its scoring."""
    return n * (steps * step_seconds + score_seconds)


def _confirm_plan(step_seconds, seconds, num_classes, n_images):
    """Images and schedule length of the margin test that fit `seconds`. Read at the schedule's end
    (HYP['confirm_read'] 1, the seed's), the release's ladder (_plan, up to HYP['confirm_steps']).
    Read earlier, the schedule is what the statistic means (how far the warm-up's steps move an
    activation), so it stays HYP['confirm_steps'] and only the images go down the ladder's sizes,
    each priced at the steps that run; where none fits, the smallest (the deadline still stops it). With
    HYP['confirm_min'] k > 0: None (the test is skipped) where the plan that fits has fewer than k images
    (or fewer than the folder holds) or none fits."""
    read = HYP['confirm_read']

    def fits(k, steps):  # k images on a `steps`-step schedule, each priced at the steps that run (both searches')
        return _rung_seconds(k, _read_steps(steps, read) + _early_steps(steps), step_seconds, 0.0) * num_classes <= seconds
    if read >= 1:  # with HYP['early_read'], each step priced with the early search's share of the schedule
        more = 1 + _early_steps(HYP['confirm_steps']) / HYP['confirm_steps']
        n, steps = _plan(step_seconds * more, seconds, num_classes, n_images, max_steps=HYP['confirm_steps'])
    else:
        steps, sizes = HYP['confirm_steps'], _sizes(n_images)
        n = next((k for k in sizes if fits(k, steps)), sizes[-1])
    least = HYP['confirm_min']
    if least and (n < min(least, n_images) or not fits(n, steps)):
        return None
    return n, steps


def _read_steps(steps, read):
    """The steps the margin search runs of its `steps`-step schedule when read after a share `read`."""
    return max(1, round(read * steps))


def _early_steps(steps):
    """The steps the early margin search runs of its `steps`-step schedule (HYP['early_read']; 0 when off)."""
    return _read_steps(steps, HYP['early_read']) if HYP['early_read'] else 0


def _sizes(n_images):
    """The ladder's image counts, largest first: HYP['images'] (or all there are), 12, 8, 4, 2, each once."""
    n_max = min(HYP['images'], n_images)
    return sorted({n for n in (n_max, 12, 8, 4, 2) if n <= n_max}, reverse=True)


def _floor(n_images):
    """The ladder's last rung, which _plan returns when no rung fits: 2 images (or fewer where the folder
    has fewer) x HYP['min_steps'] steps per class."""
    return min(2, HYP['images'], n_images), HYP['min_steps']


def _settings():
    """The (refinement share, core factor exponent) settings a call may run, the richest first: the
    release's; without the refinement (its steps cost two forward-backward passes per search step), the
    core factor's cut scored instead; without that cut too (it costs a forward pass per image and norm).
    evidence() runs the first whose last rung (_floor) fits the budget, else the last: the same for
    every class, so the null compares like with like."""
    return [(HYP['refine'], HYP['core']), (0.0, HYP['core']), (0.0, 0.0)]


def _floor_fits(step_seconds, score_seconds, seconds, num_classes, n_images):
    """Whether the ladder's last rung (_floor) fits `seconds`, at _plan's costs per image."""
    return _rung_seconds(*_floor(n_images), step_seconds, score_seconds) <= seconds / num_classes  # as _plan compares


def _draws(step_seconds, seconds, num_classes, n_images, score_seconds, plan):
    """How many image draws the release runs: HYP['draws'] where `seconds` (one pass's time) split
    between them still gives each the ladder's top rung (HYP['images'] x HYP['steps']), and the folder
    holds more images than one draw takes (else the draws would be the same images); otherwise 1."""
    d = HYP['draws']
    top = (min(HYP['images'], n_images), HYP['steps'])
    if d == 1 or plan != top or n_images <= top[0]:
        return 1
    return d if _plan(step_seconds, seconds / d, num_classes, n_images, score_seconds) == top else 1


def median_draw(p_draws):
    """The index of the draw whose p-value is the median (the upper one of an even count; the first of
    equals): the model is backdoored iff more than half of the draws are below P_THRESHOLD."""
    return sorted(range(len(p_draws)), key=lambda k: (p_draws[k], k))[len(p_draws) // 2]


def _draw_seeds(draws):
    """The image_seed of each draw (_balanced_indices): HYP['image_seed'] first (None = the folder's
    order), then that seed + k (from None: 1, 2, ...)."""
    base = HYP['image_seed']
    return [base] + [(base or 0) + k for k in range(1, draws)]


# -----------------------------------------------------------------------------
# The null: an exponential fitted to the K-1 non-maximal statistics


def exponential_fit(x):
    """Maximum-likelihood (loc, scale) of a shifted exponential: loc = min, scale = mean - min."""
    x = torch.as_tensor(x, dtype=torch.float64)
    loc = x.min()
    return loc.item(), (x.mean() - loc).item()


def exact_tail(z, k):
    """P(Z >= z) when all k statistics are i.i.d. exponential (any loc and scale), where Z = (max - loc) /
    scale and loc, scale are fitted (exponential_fit) to the other k - 1: the exact p-value of the
    largest statistic. Above the smallest statistic the other m = k - 1 are i.i.d. exponential excesses
    (the exponential forgets its start), and Z = m M / (S - M) for their largest M and sum S, so
    Z >= z iff M / S >= x = z / (m + z), whose tail is Fisher's g test:
    sum over j = 1..floor(1/x) of (-1)^(j-1) C(m, j) (1 - j x)^(m-1).
    The plug-in p, 1 - F(max)^k, treats the fitted loc and scale as known; from k - 1 points they are
    not, and it falls under 0.08 on 29% of exponential draws at k = 10 (13% at 43, 11% at 100)."""
    m = k - 1
    if m < 2 or not z > m / (m - 1):  # M is at least the others' mean excess, so Z >= m / (m - 1) always
        return 1.0
    if math.isinf(z):
        return 0.0
    j = torch.arange(1, min(m, math.floor((m + z) / z)) + 1, dtype=torch.float64)
    base = (m - (j - 1) * z) / (m + z)  # 1 - j x, written without the cancellation
    j, base = j[base > 0], base[base > 0]
    mm = torch.tensor(float(m), dtype=torch.float64)
    log_terms = torch.lgamma(mm + 1) - torch.lgamma(j + 1) - torch.lgamma(mm - j + 1) + (m - 1) * torch.log(base)
    if log_terms.max().item() > math.log(1e8):  # terms too large to cancel in float64: only when p is near 1
        return min(1.0, math.exp(log_terms[0].item()))  # the first term, an upper bound (Bonferroni)
    signs = 1.0 - 2.0 * ((j - 1) % 2)
    return min(1.0, max(0.0, math.fsum((signs * torch.exp(log_terms)).tolist())))


def _trimmed(k, trim):
    """How many of the K-1 null points are left out: `trim`, but never so many that fewer than two remain."""
    return max(0, min(trim, k - 3))


def null_fit(stats, trim=0, leave_out=()):
    """(loc, scale) of the exponential fitted to the statistics other than the largest, without their
    `trim` smallest (_trimmed) and without the classes in `leave_out` (_kept). The exponential forgets
    where it starts: above its (j+1)-th smallest value an exponential sample is still exponential with
    the same scale, so leaving out the j smallest costs points, not bias, and a class far below the rest
    no longer sets the loc and widens the scale."""
    s = torch.as_tensor(stats, dtype=torch.float64)
    others = s[_kept(s, leave_out)].sort().values
    return exponential_fit(others[_trimmed(len(others) + 1, trim):])


def _kept(s, leave_out=()):
    """Indices of the null's points: every class but the largest and those in `leave_out` (the largest
    is tested whatever its class); all but the largest where leaving them out would keep fewer than two."""
    top, out = int(s.argmax()), set(leave_out)
    others = [i for i in range(len(s)) if i != top]
    kept = [i for i in others if i not in out]
    return kept if len(kept) >= 2 else others


def _floored(loc, scale):
    """(loc, scale) with the scale kept above zero and at least HYP['scale_floor']."""
    return loc, max(scale, 1e-12 * max(1.0, abs(loc)), HYP['scale_floor'])


def max_p_value(stats, null=None, trim=0, leave_out=()):
    """p of the largest of K statistics under an exponential fitted to the other K-1 (without their
    `trim` smallest and the classes in `leave_out`, null_fit): 1 - F(max)^K (null 'plug-in'), or its
    exact tail probability (null 'exact', exact_tail, over the statistics the fit keeps and the largest);
    None: HYP['null']."""
    null = HYP['null'] if null is None else null
    s = torch.as_tensor(stats, dtype=torch.float64)
    k = len(s)
    if k < 3:
        return 1.0  # one null point: no fit possible (documented fallback: called clean)
    loc, scale = _floored(*null_fit(s, trim, leave_out))
    z = torch.clamp(s.max() - loc, min=0) / scale
    if null == 'exact':
        m = len(_kept(s, leave_out)) + 1
        return exact_tail(z.item(), m - _trimmed(m, trim))
    return float(1 - (1 - torch.exp(-z)) ** k)

# -----------------------------------------------------------------------------
# Entry points


class _Isolated:
    """Restore the global RNG states (torch, CUDA, numpy, random) on exit."""

    def __enter__(self):
        self.torch = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.np = np.random.get_state()
        self.py = random.getstate()
        return self

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.np)
        random.setstate(self.py)
        return False


def evidence(model, num_classes, test_images_folder_address, transformation):
    """Everything detect() decides from, as a dict (see the keys below)."""
    start = time.monotonic()
    deadline = start + HYP['budget_s']
    model = _check_model(model, num_classes)
    num_classes = int(num_classes)
    for key, choices in CHOICES.items():
        if HYP[key] not in choices:
            raise ValueError(f"HYP['{key}'] is {HYP[key]!r}; choose one of {choices}")
    for key, what, zero in (('landing', 'an exponent', 'off'), ('contrast_power', 'an exponent', 'the dense pass alone'),
                            ('confirm_landing', 'an exponent', "the seed's raw margin"),
                            ('core', 'an exponent', 'off'), ('scale_floor', 'a scale', 'none'),
                            ('contrast_own', 'a share of the mean own margin', 'always counted')):  # numbers >= 0
        v = HYP[key]
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"HYP['{key}'] is {v!r}; it is {what}, a number >= 0 (0 = {zero})")
    c = HYP['confirm']
    if isinstance(c, bool) or not (isinstance(c, (int, float)) and 0 <= c < 1):
        raise ValueError(f"HYP['confirm'] is {c!r}; it is a share of the time, a number in [0, 1) (0 = off)")
    for key, what in (('confirm_read', 'a share of the step schedule'), ('confirm_quantile', 'a quantile')):
        r = HYP[key]
        if isinstance(r, bool) or not (isinstance(r, (int, float)) and 0 < r <= 1):
            raise ValueError(f"HYP['{key}'] is {r!r}; it is {what}, a number in (0, 1]")
    r = HYP['early_read']
    if isinstance(r, bool) or not (isinstance(r, (int, float)) and 0 <= r <= 1):
        raise ValueError(f"HYP['early_read'] is {r!r}; it is a share of the step schedule, a number in [0, 1] (0 = off)")
    for key, what, least in (('confirm_steps', 'a number of steps', 1), ('draws', 'a number of image draws', 1),
                             ('confirm_min', 'a number of images (0 = always run)', 0),
                             ('confirm_quantile_min', 'a number of images (0 = always the quantile)', 0),
                             ('confirm_trim', 'a number of null points left out (0 = none)', 0),
                             ('confirm_trim_largest', 'a number of null points left out (0 = none)', 0),
                             ('early_split', 'a number of stages before the free variable', 0)):  # counts
        v = HYP[key]
        if isinstance(v, bool) or not (isinstance(v, int) and v >= least):
            raise ValueError(f"HYP['{key}'] is {v!r}; it is {what}, an int >= {least}")
    seed = HYP['image_seed']
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"HYP['image_seed'] is {seed!r}; it is None (the folder's order) or an int >= 0")
    r = HYP['refine']
    if isinstance(r, bool) or not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
        raise ValueError(f"HYP['refine'] is {r!r}; it is a share of the steps, a number >= 0 (0 = off)")
    shares = HYP['snapshots']
    if not (isinstance(shares, (tuple, list)) and shares and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in shares)):
        raise ValueError(f"HYP['snapshots'] is {shares!r}; it is a non-empty tuple of shares of the steps, each in (0, 1]")
    with _Isolated(), torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(0)
        x, labels, data_free = load_images(test_images_folder_address, transformation, gen)
        device = _device_for(model)
        net = copy.deepcopy(model).float().eval().requires_grad_(False).to(device)
        split = _Split(net, HYP['split'])
        lo, hi = x.amin((0, 2, 3)).view(1, 3, 1, 1), x.amax((0, 2, 3)).view(1, 3, 1, 1)  # pixel range, model units
        with torch.no_grad():
            h_all = split.features(x.to(device))  # (N, C, H, W)
        transfer = HYP['statistic'] == 'transfer'  # the factors below scale the transfer statistic only
        lands = transfer and HYP['landing'] > 0
        wants_own = HYP['own_norm'] or HYP['own_floor'] or HYP['contrast_own']
        wants_feats = (lands or transfer and (wants_own or HYP['spike'])
                       or HYP['confirm'] and HYP['confirm_landing'] > 0) and not data_free
        feats, y = _clean_features(split, h_all, labels, num_classes) if wants_feats else (None, None)
        own = own_margins(split, feats, y, num_classes) if wants_own else [0.0] * num_classes
        if HYP['init'] == 'noise':  # start from uniform noise over that range instead of the images
            x = lo + (hi - lo) * torch.rand(x.shape, generator=gen)
            with torch.no_grad():
                h_all = split.features(x.to(device))
        per_image = h_all[0].numel()
        chunk = _chunk(num_classes, per_image * min(HYP['images'], len(h_all)), device)  # the probe's; the run's follows its plan
        if HYP['split'] == 0:  # input space: the pixel range the images span
            bounds = lo.to(device), hi.to(device)
        elif _area():  # activations: their clean per-channel range, widened
            a_lo, a_hi = h_all.amin((0, 2, 3), keepdim=True), h_all.amax((0, 2, 3), keepdim=True)
            bounds = a_lo - HYP['widen'] * (a_hi - a_lo), a_hi + HYP['widen'] * (a_hi - a_lo)
        else:
            bounds = None
        sign_s, forward_s = _step_seconds(split, h_all, num_classes, chunk, bounds)  # sign_s: one forward-backward

        def costs(refine, core):  # (per image and step: the step and its refinement steps, per image: the scoring after the steps)
            return sign_s * (1 + _refinings(refine)), _scorings(_area(), refine, core) * forward_s
        left = 0.7 * (deadline - time.monotonic())  # 30% slack
        share = HYP['confirm']  # the confirming test's share of the time; the release plans with the rest
        # the confirming test's step: one forward-backward, no refinement (a little over its cost)
        plan_c = _confirm_plan(sign_s, share * left, num_classes, len(h_all)) if share else None
        if plan_c is None:  # off, or too little time for HYP['confirm_min'] images: the release has it all
            share = 0.0
        else:
            n_c, steps_c = plan_c
            left *= 1 - share
        settings = _settings()  # every class runs the first whose last rung fits, else the cheapest
        refine, core = next((r_c for r_c in settings if _floor_fits(*costs(*r_c), left, num_classes, len(h_all))), settings[-1])
        step_s, score_s = costs(refine, core)
        contrasted = _contrasted()
        if contrasted:  # two passes, each planned with half the time; below contrast_plan both would starve
            n, steps = _plan(step_s, left / 2, num_classes, len(h_all), score_s)
            contrasted = n * steps >= HYP['contrast_plan']
        if not contrasted:  # the patch pass alone, with all the time
            n, steps = _plan(step_s, left, num_classes, len(h_all), score_s)
        passes = [(_area(), bounds)] + ([(0.0, None)] if contrasted else [])  # (area, bounds): patch, dense
        chunk = _chunk(num_classes, per_image * n, device)
        draws = _draws(step_s, left / len(passes), num_classes, len(h_all), score_s, (n, steps))
        t0 = time.monotonic()
        release_end = t0 + (1 - share) * (deadline - t0)
        legs = draws * len(passes)  # each pass of each draw gets an equal share of the release's time
        results = []  # per draw: (its runs, its spikes); a run per pass: (raw statistics, landing factors, core factors)
        for k, image_seed in enumerate(_draw_seeds(draws)):
            chosen = _balanced_indices(labels, n, image_seed)
            h0, l0 = h_all[chosen], labels[chosen]
            runs, spikes = [], None
            for j, (area, pass_bounds) in enumerate(passes):
                end = t0 + (release_end - t0) * (k * len(passes) + j + 1) / legs
                stats, landed, cut = _every_class(split, h0, l0, num_classes, chunk, steps, end, pass_bounds, area, refine, core)
                far = _landing_factors(landed, feats, y, num_classes) if transfer else [1.0] * num_classes
                runs.append((stats, far, core_factors(stats, cut)))
                if j == 0 and transfer:  # the patch pass
                    spikes = _spikes(landed, feats)
            results.append((runs, spikes, _absent(l0.tolist(), num_classes)))
        per_margin = per_early = None
        if share:  # the seed's test on its own images: a balanced subset, through conv1 and layer1[0]
            chosen_c = _balanced_indices(labels, n_c, HYP['image_seed'])
            per_margin, margin_landed, per_early = _margin_tests(net, x[chosen_c].to(device), labels[chosen_c].to(device),
                                                                 num_classes, steps_c, deadline)
            if HYP['confirm_landing'] > 0:  # discount a class whose best image lands among its own clean ones
                far = torch.tensor(landing(torch.cat(margin_landed), feats, y, num_classes), dtype=torch.float64)
                per_margin = (F.softplus(torch.tensor(per_margin, dtype=torch.float64)) * far ** HYP['confirm_landing']).tolist()
    values = [v for runs, spikes, _ in results for run in runs for v in run[0] + run[1] + run[2] + (spikes or [])]
    if not all(math.isfinite(v) for v in values + own + (per_margin or []) + (per_early or [])):
        raise ValueError('the model gives non-finite outputs (NaN or inf) on these images; no test is possible')
    floor = _when('own_floor', len(h0), num_classes)  # every draw holds as many images
    decided = [_decide(runs, own, transfer, spikes, floor, absent) for runs, spikes, absent in results]
    p_draws = [d[2] for d in decided]
    middle = median_draw(p_draws)
    runs, (finals, per_contrast, p, p_patch, test, judged) = results[middle][0], decided[middle]
    p_release, p_margin, p_early, per_pooled = p, None, None, None
    if per_early is not None and HYP['early_pool']:
        per_pooled = pooled_margins(per_margin, per_early, _margin_trim(plan_c))
    if per_margin is not None:
        p, p_margin, p_early, decides = combine(p_release, per_margin, finals, plan_c, per_early)
        if decides:
            test, judged = decides, judged_margins(decides, per_margin, per_early, plan_c)
    raw, far, cores = runs[0]
    stats, dense = finals[0], finals[1] if len(finals) > 1 else None
    target = int(np.argmax(judged))
    margin_test = test in MARGIN_TESTS
    loc, scale = (null_fit(judged, _margin_trim(plan_c) if margin_test else 0, results[middle][2] if test == 'patch' else ())
                  if num_classes > 2 else (judged[0], 0.0))
    return {
        'verdict': 0 if p < P_THRESHOLD else 1,  # 0 backdoored, 1 clean
        'p_value': p,
        'judged': test,                          # the test with the smallest p-value: 'patch' (per_class), 'contrast', 'spike', or one of MARGIN_TESTS (combine 'either', 'agree', 'fisher')
        'statistic': judged[target],             # that test's largest statistic
        'target': target,                        # the class it belongs to: the suspected backdoor target
        'per_class': stats,                      # the patch test's statistics (steps 1-3, and the core factor)
        'per_class_raw': raw,                    # before the factors below (and the log)
        'own_margin': own,                       # per class: its clean images' mean softplus margin (own_norm, own_floor)
        'landing': far,                          # per class: the factor landing() ** HYP['landing'] (1 when off)
        'core': cores,                           # per class: the factor core_factors() (1 when off)
        'p_patch': p_patch,                      # the patch pass's own p-value (= p_value without the contrast)
        'per_class_dense': dense,                # contrast: the dense pass's statistics (None when off)
        'per_class_contrast': per_contrast,      # contrast: contrast() of the two passes (None when off)
        'per_class_spike': spikes,               # spike: spike() of the patch pass (None when off or data-free)
        'null_loc': loc, 'null_scale': max(scale, HYP['scale_floor']),  # the null fitted to that test's other statistics (its scale floored, as max_p_value)
        'p_release': p_release,                  # the p-value of the tests above, before the confirming test
        'p_margin': p_margin,                    # confirm: the confirming test's p-value (None when off or skipped, HYP['confirm_min'])
        'per_class_margin': per_margin,          # confirm: its statistic per class, a quantile of the margins (None when off; confirm_landing: softplus, discounted)
        'p_early': p_early,                      # early_read: the third test's p-value (None when off or skipped)
        'per_class_early': per_early,            # early_read: its statistic per class, as per_class_margin's (None when off or skipped)
        'per_class_pooled': per_pooled,          # early_pool: pooled_margins() of the two searches, the one test they make (None when off or skipped)
        'confirm_plan': plan_c,                  # confirm: its images and schedule length per class (confirm_read of the steps run; None when off or skipped)
        'p_draws': p_draws,                      # each image draw's p-value; p_release is their median (one draw: its own)
        'draw': middle,                          # the draw whose statistics the fields above report
        'absent': list(results[middle][2]),      # null_absent: the classes that draw's patch null left out (_absent)
        'images': int(len(h0)), 'steps': steps, 'draws': draws, 'data_free': data_free,
        'refine': refine,                        # the refinement's share of the steps this call ran (0: HYP['refine'] did not fit)
        'core_power': core,                      # the core factor's exponent this call ran (0: its cut did not fit either; _settings)
        'seconds': time.monotonic() - start, 'device': str(device),
    }


def _decide(runs, own, transfer, spikes=None, floor=None, absent=()):
    """From each pass's (raw statistics, landing factors, core factors) and the classes' own margins:
    the final statistics per pass, the contrast (None with one pass), the p-value, the patch test's own
    p-value, which test decided ('patch', 'contrast' or 'spike') and that test's statistics. The core
    factors enter the patch test only: the contrast asks how easy a class is with a patch at all. A
    second pass (the dense one) brings in the contrast; per-class spike() values (HYP['spike']) a third
    test. The p-value is Sidak's over the tests run: 1 - (1 - the smallest) ** (how many). With
    `floor` (None: HYP['own_floor'] is True; evidence() resolves 'sparse' for its draw, _when) each
    transfer statistic S of class t first becomes (1 - 1/K) S + own[t] / K (the core factors were taken
    before), and HYP['own_norm'] divides by 1 + own[t]. HYP['contrast_own'] may leave the contrast
    uncounted (p 1, _own_gate). The patch test's null leaves out the classes in `absent` (_absent)."""
    finals, plain, raw = [], [], []
    k = len(own)
    norm = own if HYP['own_norm'] else [0.0] * k
    floor = HYP['own_floor'] is True if floor is None else floor
    for stats, far, cores in runs:
        if floor and transfer:  # every class gets the share of its own images a draw of all classes would give it
            stats = [(1 - 1 / k) * s + o / k for s, o in zip(stats, own)]
        base = [s * f / (1.0 + o) for s, o, f in zip(stats, norm, far)]
        stats = [b * c for b, c in zip(base, cores)]
        raw.append(base)
        if transfer and HYP['log']:  # every transfer statistic is >= 0 (a softplus times factors >= 0)
            base, stats = [math.log1p(s) for s in base], [math.log1p(s) for s in stats]
        finals.append(stats)
        plain.append(base)
    per_contrast = contrast(plain[0], plain[1], raw[1]) if len(finals) > 1 else None
    tests = [('patch', finals[0]), ('contrast', per_contrast), ('spike', spikes)]
    tests = [(name, v, max_p_value(v, leave_out=absent if name == 'patch' else ()) if name != 'contrast' or _own_gate(v, own)
              else 1.0) for name, v in tests if v is not None]
    p_patch = tests[0][2]
    test, judged, p_min = min(tests, key=lambda t: t[2])  # the first of equals: the patch test on a tie
    p = p_min if len(tests) == 1 else 1 - (1 - p_min) ** len(tests)  # Sidak: the smallest of len(tests) p-values
    return finals, per_contrast, p, p_patch, test, judged


def _chunk(num_classes, per_class, device):
    """How many classes are optimised at once, each with a free variable of `per_class` elements (its
    images' activations): as many as keep the batch within HYP['chunk_elems'] (memory) and, on a CPU,
    within HYP['cpu_chunk_elems']. On a 2-core EPYC with a 32 MB L3 one forward-backward cost 1.2-1.4 ms
    an image at width 16 from 32 to 384 images (0.5-6 M elements) and 1.9-2.0 ms at 516 and 768 (8-12 M);
    at width 64, 11.5-12.2 ms from 16 to 96 images and 14.3-15.0 ms from 128 (RESULTS.md, Chunks that fit
    the cache). The timing probe (_step_seconds) runs at the small batch, so a run in one large chunk
    overshot its plan (12 x 6 on 43 classes: 40-47 s of a 40 s budget). A GPU keeps the large batch."""
    cap = HYP['chunk_elems'] if device.type != 'cpu' else min(HYP['chunk_elems'], HYP['cpu_chunk_elems'])
    return max(1, min(num_classes, cap // per_class))


def _chunks(num_classes, chunk, end):
    """The classes `chunk` at a time, each with its mark: chunk i stops at (i + 1) / chunks of the time
    left until `end`, so a slow chunk (the machine got busier after the plan was made) cannot leave the
    later classes a step each."""
    firsts = range(0, num_classes, chunk)
    t0 = time.monotonic()
    for i, c in enumerate(firsts):
        yield list(range(c, min(num_classes, c + chunk))), t0 + (end - t0) * (i + 1) / len(firsts)


def _every_class(split, h0, labels, num_classes, chunk, steps, end, bounds, area, refine, core):
    """Statistics of all classes, `chunk` classes at a time, and where each class's direction lands
    (a list of (chunk, F) tensors; None entries for the 'margin' statistic), and the statistics under the
    cut direction (a list; None unless _cuts(area, refine, core), see _transfer). Each chunk stops at its
    mark (_chunks). refine: the refinement's share of the steps; core: the core factor's exponent."""
    stats, landed, cut = [], [], []
    exclude = _when('exclude_own', len(h0), num_classes)
    for classes, mark in _chunks(num_classes, chunk, end):
        s, where, c_cut = _class_statistics(split, h0, labels, classes, steps, mark, bounds, area, refine, core, exclude)
        stats += s
        landed.append(where)
        cut = None if c_cut is None or cut is None else cut + c_cut
    return stats, landed, cut


def _margin_search(split, h0, num_classes, chunk, steps, end, read=1.0, labels=None):
    """The seed's search, per class: the margins the images reach (the seed takes the largest) when each
    image's activation h0 (n, C, H, W) (after `split`'s stem; the seed's is conv1 + layer1[0]) is its
    own free variable, pushed towards the class for `steps` sign steps. The seed rebuilds AdamW at
    every step, so each of its steps is Adam's first, lr * g / (|g| + 1e-8) (a sign step, except
    where the gradient g is tiny), plus the decoupled weight decay; this takes that step directly, on
    the release's warm-up and cosine schedule. The margins are those of the last forward pass, as the
    seed reads them; with `read` < 1 the search stops after that share of the schedule's steps (at
    least one), on the same schedule, and reads the margins there (0.1: at the end of the warm-up).
    Each class's statistic is the HYP['confirm_quantile'] quantile of its images' margins
    (quantile_margins; 1, the seed's: the largest; the largest too with fewer than
    HYP['confirm_quantile_min'] images), given the images' `labels` over the other classes' images only
    (all, where it has no other). Classes run `chunk` at a time, each chunk stopping at its mark
    (_chunks). Also returns where the image nearest each class's statistic lands in penultimate
    features: a list of (chunk, F) tensors."""
    n, stats, landed = len(h0), [], []
    q = HYP['confirm_quantile'] if n >= HYP['confirm_quantile_min'] else 1.0
    for classes, mark in _chunks(num_classes, chunk, end):
        chunk_classes = torch.tensor(classes, device=h0.device)
        target = chunk_classes.repeat_interleave(n)
        var = h0.repeat(len(classes), 1, 1, 1).requires_grad_(True)  # (k*n, C, H, W)
        for step in range(_read_steps(steps, read)):
            feats = split.pooled(var)  # (k*n, F)
            m = margin(split.linear(feats), target)  # (k*n,)
            grad, = torch.autograd.grad(m.sum(), var)
            with torch.no_grad():
                lr = _lr_at(step, steps)
                var.mul_(1 - lr * HYP['weight_decay']).add_(grad / (grad.abs() + 1e-8), alpha=lr)  # Adam's eps
            if time.monotonic() > mark:
                break
        m = m.detach().view(len(classes), n)
        if labels is not None:  # a class's own images start ahead: left out where others exist
            own = labels.view(1, n) == chunk_classes.view(-1, 1)
            m = torch.where(own & ~own.all(1, keepdim=True), torch.full_like(m, -math.inf), m)
        best, at = quantile_margins(m, q)
        stats += best.tolist()
        landed.append(feats.detach().view(len(classes), n, -1)[torch.arange(len(classes), device=at.device), at])
    return stats, landed


def _margin_tests(net, x, labels, num_classes, steps, deadline):
    """The margin test's per-class statistics on images x (n, 3, H, W) with their labels, and where each
    class's image nearest its statistic lands (_margin_search): through conv1 + layer1[0] (the seed's
    split), read after HYP['confirm_read'] of a `steps`-step schedule; and with HYP['early_read'] > 0 the
    same search through HYP['early_split'] stages, read after that share (the third test's statistics,
    else None). Each has the share of the time until `deadline` that its steps have of both's."""
    others = labels if HYP['confirm_others'] else None
    reads = _read_steps(steps, HYP['confirm_read']), _early_steps(steps)
    searches = [(2, HYP['confirm_read'])] + ([(HYP['early_split'], HYP['early_read'])] if reads[1] else [])
    t0, out = time.monotonic(), []
    for (split_at, read), done in zip(searches, (reads[0], sum(reads))):
        split = _Split(net, split_at)
        with torch.no_grad():
            h = split.features(x)  # (n, C, H, W)
        end = t0 + (deadline - t0) * done / sum(reads)
        out.append(_margin_search(split, h, num_classes, _chunk(num_classes, h.numel(), x.device), steps, end, read, others))
    (per_margin, landed), early = out[0], out[1][0] if len(out) > 1 else None
    return per_margin, landed, early


def quantile_margins(m, q):
    """Per row of m (k, n), the margins of n images pushed towards each of k classes (-inf where an image
    is left out): the q-quantile of the row's finite margins (linear interpolation; q = 1, the largest,
    is the seed's statistic) and the index of the image whose margin lies nearest it. Every row holds at
    least one finite margin (_margin_search leaves a class's own images in where it has no other)."""
    if q >= 1:
        return m.max(1)
    finite = torch.isfinite(m)
    best = torch.nanquantile(torch.where(finite, m, torch.full_like(m, math.nan)), q, dim=1)
    at = torch.where(finite, (m - best.view(-1, 1)).abs(), torch.full_like(m, math.inf)).argmin(1)
    return best, at


def _margin_trim(plan):
    """How many of the other classes' smallest statistics the margin test's null leaves out, given its
    plan (images, steps): HYP['confirm_trim_largest'] where it reads each class's largest margin (fewer
    than HYP['confirm_quantile_min'] images), else HYP['confirm_trim']."""
    largest = plan is not None and plan[0] < HYP['confirm_quantile_min']  # None (no plan given): the quantile's
    return HYP['confirm_trim_largest'] if largest else HYP['confirm_trim']


def combine(p_release, per_margin, finals, plan=None, per_early=None):
    """(p-value, p_margin, p_early, which test decides) from the release's p-value, the margin test's
    per-class statistics and the release passes' final statistics, by HYP['combine']: 'both', an
    intersection-union test, max(p, p_margin); 'either', alternatives, 1 - (1 - min(p, p_margin))^2
    (Sidak); 'agree', the same, with p_margin counted only where a pass leads with its class; 'fisher',
    'either', and where the patch pass (finals[0]) leads with the margin test's class, the smaller of that
    and fisher_two(p_patch, p_margin), where the margin test then decides too. `per_early` (HYP['early_read'];
    None when off): the early margin search's statistics, whose p-value p_early is one more alternative
    (Sidak over three; 'both': max(p, 1 - (1 - min(p_margin, p_early))^2)); p_early is None without them.
    With HYP['early_pool'] the two searches are instead one test in the margin test's place: the p-value of
    pooled_margins() (Sidak over two). The test that decides: None (the release's), 'margin', 'early' or
    'pooled'. `plan`: the margin tests' (images, steps), which sets their nulls' trim (_margin_trim)."""
    trim = _margin_trim(plan)
    p_margin = max_p_value(per_margin, trim=trim)
    p_early = None if per_early is None else max_p_value(per_early, trim=trim)
    if p_early is not None and HYP['early_pool']:
        pooled = pooled_margins(per_margin, per_early, trim)
        p, decides = _alternatives(p_release, pooled, max_p_value(pooled, trim=trim), finals)
        return p, p_margin, p_early, decides and 'pooled'
    p, decides = _alternatives(p_release, per_margin, p_margin, finals, p_early)
    return p, p_margin, p_early, decides


def _alternatives(p_release, per_margin, p_margin, finals, p_early=None):
    """combine()'s (p-value, which test decides) for a margin-type test with per-class statistics
    `per_margin` and p-value `p_margin`, and the early search's p-value (None: not run)."""
    early, tests = (1.0, 2) if p_early is None else (p_early, 3)
    how = HYP['combine']
    if how == 'both':
        return max(p_release, 1 - (1 - min(p_margin, early)) ** (tests - 1)), None
    top = int(np.argmax(per_margin))
    agrees = how in ('either', 'fisher') or top in {int(np.argmax(f)) for f in finals}
    counted = p_margin if agrees else 1.0
    p = 1 - (1 - min(p_release, counted, early)) ** tests
    if how == 'fisher' and top == int(np.argmax(finals[0])):
        joint = fisher_two(max_p_value(finals[0]), p_margin)
        if joint < p:
            return joint, 'margin'
    return p, 'early' if early < min(p_release, counted) else 'margin' if counted < p_release else None


MARGIN_TESTS = ('margin', 'early', 'pooled')  # combine()'s names for the test that decides, besides the release's


def judged_margins(decides, per_margin, per_early, plan=None):
    """The per-class statistics of the margin-type test that combine() says decides."""
    if decides == 'pooled':
        return pooled_margins(per_margin, per_early, _margin_trim(plan))
    return {'margin': per_margin, 'early': per_early}[decides]


def pooled_margins(per_margin, per_early, trim=0):
    """Per class, the margin test's and the early search's statistics, each standardised by the exponential
    null fitted to its other classes (null_fit, scale floored as max_p_value's), summed: (s - loc) / scale
    + (e - loc') / scale'. Where a trigger's target leads both searches the sum adds their evidence in one
    test; a class that leads one alone counts with its standing in the other. The sum of two standardised
    exponentials is lighter-tailed than the exponential max_p_value fits to it, so the test is conservative
    (RESULTS.md, The two margin searches pooled into one test)."""
    total = 0
    for stats in (per_margin, per_early):
        loc, scale = _floored(*null_fit(stats, trim))
        total = total + (torch.as_tensor(stats, dtype=torch.float64) - loc) / scale
    return total.tolist()


def fisher_two(p1, p2):
    """Fisher's combination of two independent p-values: P(U1 U2 <= t) = t (1 - ln t) at t = p1 p2 (the
    product of two uniforms; -2 ln t is chi-squared with 4 degrees of freedom)."""
    t = p1 * p2
    return 1.0 if t >= 1 else 0.0 if t <= 0 else t * (1 - math.log(t))


def _own_gate(per_contrast, own):
    """Whether the contrast test counts (HYP['contrast_own'] = r > 0): only where its top class's clean
    images are held with at most r times the classes' mean own margin (own_margins()). A clean-label
    trigger (SIG) is learnt in place of the target class's own features: on the records of RESULTS.md
    its target's clean images had 0-9% of the mean margin, every other class 12% or more. Uncounted,
    the test still ran: the Sidak correction stays over it (_decide). Without own margins (all 0,
    data-free) it always counts."""
    r = HYP['contrast_own']
    if not r:
        return True
    top = max(range(len(per_contrast)), key=per_contrast.__getitem__)
    return own[top] <= r * sum(own) / len(own)


def contrast(patch, dense, standing=None):
    """Per class: how much more reachable it is with a dense change than with a patch,
    D~ / (P~ + 1) ** q (q = HYP['contrast_power']), where each pass's statistics are divided by their
    mean over the classes. The + 1 keeps a class with a patch statistic near zero from exploding the
    ratio; q sets how hard a class that a patch also reaches easily (a naturally easy class) is
    discounted, while a class that a patch cannot reach keeps its dense standing whatever q is. With
    HYP['contrast_cap'] each value is also multiplied by min(1, S~), S~ = `standing` (each class's dense
    statistic before the log, _decide; None: `dense`) over its mean: a class a dense change reaches no
    better than the average class is discounted, however hard a patch finds it."""
    standing = dense if standing is None else standing
    mp, md, ms = (max(sum(v) / len(v), 1e-12) for v in (patch, dense, standing))
    q, cap = HYP['contrast_power'], HYP['contrast_cap']
    return [(d / md) / (p / mp + 1) ** q * (min(1.0, s / ms) if cap else 1.0) for p, d, s in zip(patch, dense, standing)]


def spike(landed, feats):
    """Per class: how far its direction drives some penultimate unit beyond the clean images,
    max over units j of (landed[j] - mu[j]) / sd[j], clamped at 0, where landed (K, F) is where the
    class's direction lands the pushed images (the landing points landing() reads) and mu, sd are the
    mean and standard deviation of the folder's clean features (N, F). A trigger is a feature of its
    own and typically drives a unit of its own far out; a naturally easy class lands its images
    among the clean images of that class, inside the clean range."""
    with torch.no_grad():
        feats, landed = feats.double(), landed.double().to(feats.device)
        sd = feats.std(0) if len(feats) > 1 else torch.zeros_like(feats[0])
        floor = 1e-6 * max(1.0, sd.max().item())  # a unit constant over the clean images: its z would explode
        z = (landed - feats.mean(0)) / sd.clamp(min=floor)
        return z.max(1).values.clamp(min=0).tolist()


def _spikes(landed, feats):
    """spike() of a pass's landing points (a list of (chunk, F) tensors) when HYP['spike'] is on and
    there are clean features; None otherwise (off, or a data-free run)."""
    return spike(torch.cat(landed), feats) if HYP['spike'] and feats is not None else None


def _balanced_indices(labels, n, image_seed=None):
    """n indices into labels, class-balanced: the first images of each class in the folder's order, or,
    with image_seed an int, in an order drawn from that seed (its own generator, no global state)."""
    items = [(i, int(l)) for i, l in enumerate(labels)]
    if image_seed is not None:
        perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(image_seed))
        items = [items[i] for i in perm.tolist()]
    order = _balanced_subset(items, n)
    return torch.tensor([i for i, _ in order], dtype=torch.long)


def detect(model, num_classes, test_images_folder_address, transformation):
    """0 if the model is backdoored, 1 if it is clean."""
    return evidence(model, num_classes, test_images_folder_address, transformation)['verdict']


def backdoor_model_detector(model, num_classes, test_images_folder_address, transformation):
    """The official grader's convention: 1 if backdoored, 0 if clean."""
    return 1 - detect(model, num_classes, test_images_folder_address, transformation)
