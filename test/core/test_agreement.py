"""The agreement rule (core.agreement, docs/algorithm.md 8): the decision
margin of each flipped pixel against a plain per-pixel loop, with and
without a threshold, and what the rule accepts and refuses."""

from __future__ import annotations

import numpy as np
import pytest

from cass_ros.core.agreement import (Agreement, AgreementRule, compare_labels, compare_results,
                                     decision_margins)
from cass_ros.core.result import SegmentationResult


def _result(labels: np.ndarray, probs: np.ndarray | None) -> SegmentationResult:
    k = 0 if probs is None else probs.shape[0]
    return SegmentationResult(labels=labels.astype(np.uint8), class_names=[],
                              presence=np.zeros(k, np.float32), pixel_counts=np.zeros(k, np.int64),
                              mean_confidence=np.zeros(k, np.float32),
                              boxes=np.zeros((k, 4), np.int64), probs=probs)


def _plain_margin(p: np.ndarray, a: int, b: int, threshold: float) -> float:
    """One pixel's margin, written out: |p_a - p_b|, and where one label is 0
    under a threshold, at most the best prompted class's distance to it."""
    m = abs(float(p[a]) - float(p[b]))
    if threshold > 0 and 0 in (a, b):
        m = min(m, abs(float(p[1:].max()) - threshold))
    return m


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_flip_margin_against_a_plain_loop(threshold):
    rng = np.random.default_rng(7)
    pa = rng.random((4, 6, 5)).astype(np.float32)
    pb = np.clip(pa + rng.normal(0, 0.02, pa.shape), 0, 1).astype(np.float32)
    la, lb = pa.argmax(0), pb.argmax(0)
    lb[0, 0] = (la[0, 0] + 1) % 4       # a flip whatever the noise did
    lb[1, 2] = 0 if la[1, 2] else 1     # one with label 0 on a side
    got = compare_results([_result(la, pa)], [_result(lb, pb)], threshold=threshold)
    want = 0.0
    for y, x in zip(*np.nonzero(la != lb)):
        want = max(want, min(_plain_margin(pa[:, y, x], la[y, x], lb[y, x], threshold),
                             _plain_margin(pb[:, y, x], la[y, x], lb[y, x], threshold)))
    assert got.max_flip_margin == pytest.approx(want)
    assert got.equal == int((la == lb).sum()) and got.pixels == la.size
    margins = decision_margins(pa, la, lb, threshold)
    assert margins.shape == la.shape
    assert margins[0, 0] == pytest.approx(_plain_margin(pa[:, 0, 0], la[0, 0], lb[0, 0],
                                                        threshold))


def test_the_rule_accepts_near_ties_and_refuses_anything_else():
    p = np.array([[[0.50]], [[0.49]], [[0.01]]], np.float32)   # labels 0 and 1 nearly tied
    q = np.array([[[0.49]], [[0.50]], [[0.01]]], np.float32)
    tie = compare_results([_result(np.array([[0]]), p)], [_result(np.array([[1]]), q)])
    rule = AgreementRule(min_share=0.0, max_prob_diff=0.02)
    assert rule.failures(tie) == [] and tie.max_flip_margin == pytest.approx(0.01)
    # the same flip with probabilities that say label 0 clearly won: a wrong label
    wrong = compare_results([_result(np.array([[0]]), p)], [_result(np.array([[2]]), p)])
    (why,) = rule.failures(wrong)
    assert "not a near-tie" in why
    assert any("differs by" in f for f in AgreementRule(0.0, 0.001).failures(tie))
    with pytest.raises(AssertionError, match=r"labels agree on 0\.0000% < 50\.0000%"):
        AgreementRule(min_share=0.5, max_prob_diff=1.0).check(tie)
    with pytest.raises(ValueError):
        AgreementRule(min_share=1.5)


def test_label_images_alone_are_held_to_the_share():
    a = [np.zeros((10, 10), np.uint8)]
    b = [a[0].copy()]
    b[0][3, 4] = 2
    got = compare_labels(a, b)
    assert isinstance(got, Agreement) and got.equal == 99 and got.pixels == 100
    assert np.isnan(got.max_prob_diff) and np.isnan(got.max_flip_margin)
    assert AgreementRule(min_share=0.99).failures(got) == []
    assert AgreementRule(min_share=0.995).failures(got)
