"""The prompt-change state machine shared by the node and cass_bag
(cass_ros.core.prompt_session), on the real segmenter with tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from cass_ros.core.config import build_config
from cass_ros.core.prompt_session import PromptSession
from cass_ros.core.prompts import MAX_NAME_CHARS, PromptError, PromptSet
from cass_ros.core.segmenter import Segmenter
from cass_ros.core.visualize import palette

A = PromptSet(classes=(("person", "pedestrian"), ("car",)), background=("sky",))
B = PromptSet(classes=(("tree",),))


@pytest.fixture(scope="module")
def seg(tiny_models, text_cache_dir) -> Segmenter:
    cfg = build_config({"device": "cpu", "short_side": 64, "weights_cache_dir": text_cache_dir})
    return Segmenter(cfg, models=tiny_models)


def test_waits_until_the_first_set_is_active(seg) -> None:
    session = PromptSession()
    assert session.waiting and session.active is None
    assert session.request(A)
    assert session.waiting               # asked for, not yet prepared
    active = session.activate(seg, A)
    assert not session.waiting and session.active is active
    assert active.prompt_id == 1 and active.prepared.prompt_id == 1
    assert active.class_names == ["background", "person", "car"]
    np.testing.assert_array_equal(active.colors, palette(3))


def test_ids_count_accepted_sets_and_repeats_are_ignored(seg) -> None:
    session = PromptSession()
    assert session.request(A)
    session.activate(seg, A)
    assert not session.request(A)        # the set in force again: nothing to do
    assert session.request(B)
    assert session.activate(seg, B).prompt_id == 2
    assert session.request(A)            # back to A is a change
    assert session.activate(seg, A).prompt_id == 3


def test_invalid_sets_are_refused_before_anything_changes(seg) -> None:
    session = PromptSession()
    with pytest.raises(PromptError, match="control characters"):
        session.request(PromptSet(classes=(("bad\x07name",),)))
    with pytest.raises(PromptError, match="longer than"):
        session.request(PromptSet(classes=(("x" * (MAX_NAME_CHARS + 1),),)))
    assert session.waiting
    assert session.request(A)            # a refused set was never noted as asked for


def test_a_failed_preparation_leaves_no_gap_in_the_ids(seg, monkeypatch) -> None:
    session = PromptSession()
    session.request(A)
    session.activate(seg, A)
    session.request(B)

    def fail(*_args, **_kw):
        raise RuntimeError("text encoder out of memory")

    with monkeypatch.context() as m:
        # on the class: an instance attribute would outlive the undo and
        # be copied by Segmenter.with_config in later tests
        m.setattr(Segmenter, "prepare_prompts", fail)
        with pytest.raises(RuntimeError):
            session.activate(seg, B)
    assert session.active.prompt_id == 1 and session.active.prompt_set == A
    assert session.request(B)            # may be asked for again
    assert session.activate(seg, B).prompt_id == 2


def test_reprepare_keeps_the_id_and_follows_the_new_settings(seg, tiny_models) -> None:
    session = PromptSession()
    assert session.reprepare(seg) is None
    session.request(A)
    first = session.activate(seg, A)
    other = seg.with_config(seg.config.replace(cluster_threshold=0.0))
    again = session.reprepare(other)
    assert session.active is first       # not swapped until committed
    assert again.prompt_id == first.prompt_id and again.prompt_set == A
    # cluster_threshold 0: every name is its own cluster
    assert again.prepared.cluster_onehot.shape[0] == len(again.prepared.names)
    session.commit(again)
    assert session.active is again
