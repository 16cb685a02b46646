"""The exponential null and the p-value, against closed forms."""
import math

import pytest
import torch

import solution


def test_exponential_mle_is_min_and_mean_minus_min():
    loc, scale = solution.exponential_fit([3.0, 4.0, 5.0, 8.0])
    assert loc == 3.0 and scale == pytest.approx(2.0)


def test_exponential_mle_recovers_parameters_of_a_large_sample():
    g = torch.Generator().manual_seed(0)
    x = 1.5 + 0.7 * torch.empty(200_000, dtype=torch.float64).exponential_(generator=g)
    loc, scale = solution.exponential_fit(x)
    assert loc == pytest.approx(1.5, abs=1e-3) and scale == pytest.approx(0.7, rel=0.01)


def test_p_value_closed_form():
    # null [0, 1, 2]: loc 0, scale 1; F(10) = 1 - e^-10; p = 1 - F^4
    p = solution.max_p_value([1.0, 10.0, 0.0, 2.0])
    assert p == pytest.approx(1 - (1 - math.exp(-10)) ** 4, rel=1e-9)


def test_p_value_is_small_for_an_outlier_and_large_without_one():
    assert solution.max_p_value([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 1.0, 0.98, 30.0]) < 1e-6
    assert solution.max_p_value([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 1.0, 0.98, 1.25]) > 0.5


def test_rule_fires_often_on_exponential_draws_and_rarely_on_gaussian_ones():
    # The seed's test fits loc and scale to only K-1 points, so on statistics that truly are exponential
    # (K = 10) "p < 0.08" fires about 30% of the time, not 8%; on light-tailed (Gaussian) statistics it
    # almost never fires. A per-class statistic must therefore be light-tailed on clean models.
    g = torch.Generator().manual_seed(1)
    n = 2000
    expo = sum(solution.max_p_value(torch.empty(10).exponential_(generator=g)) < 0.08 for _ in range(n)) / n
    gauss = sum(solution.max_p_value(5 + torch.randn(10, generator=g)) < 0.08 for _ in range(n)) / n
    assert 0.2 < expo < 0.4
    assert gauss < 0.08


def test_two_classes_have_no_null_and_are_called_clean():
    assert solution.max_p_value([0.0, 100.0]) == 1.0


def test_degenerate_null_does_not_divide_by_zero():
    assert solution.max_p_value([2.0, 2.0, 2.0, 2.0]) == 1.0
    assert solution.max_p_value([2.0, 2.0, 2.0, 5.0]) < 1e-6


def test_margin():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert solution.margin(logits, torch.tensor([1, 1])).tolist() == [1.0, -5.0]
