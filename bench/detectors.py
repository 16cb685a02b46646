"""The detectors the bench can run, by name: solution.py and the model-level baselines.

Each is a module with evidence(model, num_classes, folder, transformation) -> dict (verdict, p_value,
statistic, target, per_class) and detect(...) -> 0/1, plus a HYP dict of its settings.
"""
import ast
import contextlib
import importlib

DETECTORS = ('solution', 'seed', 'mmbd', 'nc', 'l1mad')


def load_detector(name):
    """A module with evidence(model, num_classes, folder, transformation) -> dict (verdict, p_value, statistic)."""
    if name == 'solution':
        return importlib.import_module('solution')
    if name not in DETECTORS:
        raise SystemExit(f'unknown detector {name!r}; choose from {", ".join(DETECTORS)}')
    return importlib.import_module(f'bench.baselines.{name}')


def override(detector, settings):
    """Apply KEY=VALUE settings to the detector's HYP dict (ablations); an unknown key fails."""
    hyp = getattr(detector, 'HYP', None)
    for item in settings:
        key, sep, value = item.partition('=')
        if not sep or hyp is None or key not in hyp:
            known = ', '.join(sorted(hyp)) if hyp else 'none'
            raise SystemExit(f'unknown setting {item!r}; the detector\'s settings: {known}')
        try:
            hyp[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            hyp[key] = value  # a bare word: a string setting such as mode=universal


@contextlib.contextmanager
def restoring(detector):
    """The detector's HYP as it was on entry, again on exit (even on an error): settings applied inside,
    by override or by hand, hold for that block only and never leak into later callers."""
    hyp = getattr(detector, 'HYP', None)
    saved = None if hyp is None else dict(hyp)
    try:
        yield hyp
    finally:
        if hyp is not None:
            hyp.clear()
            hyp.update(saved)
