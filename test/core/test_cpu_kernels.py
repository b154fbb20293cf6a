"""core.cpu_kernels and the ``cpu_kernels`` setting: oneDNN's linear is
F.linear's arithmetic (checked in float64), it is chosen only where it
applies, ``auto`` chooses by what it measured (never by a vendor), the C
heap keeps freed memory on glibc, and a segmenter agrees with itself under
either kernel set (the agreement rule). Tiny random models on the CPU; no
assertion on a time."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cass_ros.core import cpu_kernels
from cass_ros.core.agreement import AgreementRule, compare_segmenters
from cass_ros.core.config import ConfigError, build_config
from cass_ros.core.c_heap import keep_freed_memory, libc
from cass_ros.core.cpu_kernels import LinearTimings, onednn_available, onednn_linear
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.segmenter import TIMING_ROWS, Segmenter, linear_shapes
from cass_ros.core.vit_features import DinoKeys

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear")
CPU = torch.device("cpu")


@needs_onednn
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_is_the_float64_product(with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 96, generator=gen)
    w = torch.randn(40, 96, generator=gen)
    b = torch.randn(40, generator=gen) if with_bias else None
    want = x.double() @ w.double().T + (b.double() if with_bias else 0)
    got = onednn_linear(x, w, b)
    assert got.shape == (3, 50, 40) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    # a non-contiguous input (a transposed view) is flattened correctly
    xt = torch.randn(96, 50, generator=gen).T
    torch.testing.assert_close(onednn_linear(xt, w, b).double(),
                               xt.double() @ w.double().T + (b.double() if with_bias else 0),
                               atol=1e-4, rtol=1e-5)


@needs_onednn
def test_onednn_only_for_eager_fp32_on_the_cpu():
    select = cpu_kernels.select_linear
    assert select("onednn", CPU, None, compiled=False) is onednn_linear
    assert select("torch", CPU, None, compiled=False) is F.linear
    assert select("onednn", CPU, torch.bfloat16, compiled=False) is F.linear  # autocast
    assert select("onednn", CPU, None, compiled=True) is F.linear
    assert select("onednn", torch.device("cuda"), None, compiled=False) is F.linear
    shapes = [(8, 16, 32)]
    for where, amp, compiled in ((torch.device("cuda"), None, False), (CPU, torch.bfloat16, False),
                                 (CPU, None, True)):
        assert select("auto", where, amp, compiled=compiled, shapes=shapes) is F.linear


SHAPES = ((64, 32, 96), (64, 96, 32))


def test_auto_takes_the_kernel_it_measured_faster():
    """The choice is the measurement's: onednn exactly where it took under
    ONEDNN_MARGIN of torch's time; the timings are cached per shape set."""
    choice, timings = cpu_kernels.choose_linear(SHAPES)
    assert timings.shapes == SHAPES and timings.torch_ms > 0
    faster = (timings.onednn_ms is not None
              and timings.onednn_ms < cpu_kernels.ONEDNN_MARGIN * timings.torch_ms)
    assert choice == timings.choice == ("onednn" if faster else "torch")
    assert cpu_kernels.choose_linear(list(SHAPES))[1] is timings  # measured once
    want = onednn_linear if choice == "onednn" else F.linear
    assert cpu_kernels.select_linear("auto", CPU, None, compiled=False, shapes=SHAPES) is want


@pytest.mark.parametrize("onednn_ms, want", [(5.0, "onednn"), (9.5, "torch"), (20.0, "torch"),
                                             (None, "torch")])
def test_auto_follows_the_timings_and_logs_them(monkeypatch, onednn_ms, want):
    """Given timings (torch 10 ms), auto picks by them, and one log line
    names both times and the choice."""
    fake = LinearTimings(SHAPES, 10.0, onednn_ms)
    monkeypatch.setattr(cpu_kernels, "time_linears", _FakeTimer(fake))
    monkeypatch.setattr(cpu_kernels, "onednn_available", lambda: onednn_ms is not None)
    records = _Records(logging.INFO)
    cpu_kernels.log.addHandler(records)
    level = cpu_kernels.log.level
    cpu_kernels.log.setLevel(logging.INFO)
    try:
        linear = cpu_kernels.select_linear("auto", CPU, None, compiled=False, shapes=SHAPES)
    finally:
        cpu_kernels.log.removeHandler(records)
        cpu_kernels.log.setLevel(level)
    assert linear is (onednn_linear if want == "onednn" else F.linear)
    lines = [m for m in records.messages if m.startswith("cpu_kernels auto")]
    onednn = "unavailable" if onednn_ms is None else f"{onednn_ms:.1f} ms"
    assert lines == [f"cpu_kernels auto: torch 10.0 ms, onednn {onednn} per pass over 2 linear "
                     f"shapes (64 rows); using {want}"]


class _FakeTimer:
    """time_linears' interface (a call, cache_info) returning given timings."""

    def __init__(self, timings: LinearTimings) -> None:
        self.timings, self.calls = timings, 0

    def __call__(self, shapes):
        self.calls += 1
        return self.timings

    def cache_info(self):
        from functools import _CacheInfo

        return _CacheInfo(0, 0, 16, self.calls)


def test_segmenter_times_the_models_own_linear_shapes(tiny_models, monkeypatch):
    """auto times every 2-D weight shape of both trunks' blocks, and the
    segmenter runs what it chose."""
    cfg = build_config(dict(device="cpu", short_side=64))
    shapes = linear_shapes(tiny_models)
    width = tiny_models.dino.embed_dim
    assert {s[0] for s in shapes} == {TIMING_ROWS}
    assert {s[1:] for s in shapes} == {(width, 3 * width), (width, width), (width, 4 * width),
                                       (4 * width, width)}
    seen = []
    monkeypatch.setattr(cpu_kernels, "choose_linear",
                        lambda s: seen.append(tuple(s)) or ("torch", None))
    seg = Segmenter(cfg, models=tiny_models)
    assert seen == [tuple(shapes)] and seg.linear is F.linear


class _Records(logging.Handler):
    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("broken", ["disagrees", "missing"])
def test_a_broken_onednn_falls_back_to_torch(monkeypatch, broken):
    """A torch whose op disagrees with F.linear, or has none: F.linear,
    and the log says why."""
    def disagrees(x, w, b=None):
        return F.linear(x, w, b) + 1

    def missing(x, w, b=None):
        raise RuntimeError("No such operator mkldnn::_linear_pointwise")

    monkeypatch.setattr(cpu_kernels, "onednn_linear", {"disagrees": disagrees,
                                                       "missing": missing}[broken])
    records = _Records()
    cpu_kernels.log.addHandler(records)
    cpu_kernels.onednn_available.cache_clear()
    try:
        assert not cpu_kernels.onednn_available()
        assert cpu_kernels.select_linear("onednn", CPU, None, compiled=False) is F.linear
        want = "disagrees with F.linear" if broken == "disagrees" else "No such operator"
        assert any(want in m for m in records.messages), records.messages
    finally:
        cpu_kernels.log.removeHandler(records)
        cpu_kernels.onednn_available.cache_clear()


def test_heap_keeps_freed_memory_on_glibc():
    if libc() is None:
        pytest.skip("the C library is not glibc: no mallopt")
    assert keep_freed_memory() is True


def test_dino_keys_are_the_key_third_of_timms_qkv(tiny_models):
    """DinoKeys computes only the key rows of the last qkv projection; they
    equal the keys cut from timm's full qkv output."""
    dino = tiny_models.dino
    keys_of = DinoKeys(dino)
    images = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        keys, grid = keys_of.last_keys(images)
        x = dino.patch_embed.norm(dino.patch_embed.proj(images).flatten(2).transpose(1, 2))
        x = torch.cat([dino.cls_token.expand(2, -1, -1), x], 1)
        x = x + keys_of._pos.get(dino.pos_embed[0], grid, keys_of.pretrained_grid)
        x = dino.norm_pre(x)
        for blk in dino.blocks[:-1]:
            x = blk(x)
        last = dino.blocks[-1]
        qkv = last.attn.qkv(last.norm1(x))  # (B, 1+N, 3*D)
        heads = last.attn.num_heads
        want = qkv.reshape(2, x.shape[1], 3, heads, -1)[:, 1:, 1].permute(0, 2, 1, 3)
    assert grid == (5, 6) and keys.shape == want.shape
    torch.testing.assert_close(keys, want, atol=2e-5, rtol=1e-5)


@pytest.mark.arithmetic
def test_segmenter_labels_equal_with_either_kernel(tiny_models):
    """Without the session's text cache: each kernel set encodes the names
    itself (embeddings cached by one would differ in the last bits from the
    other's, and other tests compare cached runs bit for bit)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(2)]
    prompts = build_prompt_set([("cat",), ("dog",), ("car",)], background=["sky"])
    for slide in (0, 48):
        base = dict(device="cpu", short_side=64, slide_crop=slide, slide_stride=24)
        plain = Segmenter(build_config(dict(base, cpu_kernels="torch")), models=tiny_models)
        fast = Segmenter(build_config(dict(base, cpu_kernels="onednn")), models=tiny_models)
        assert plain.linear is F.linear and "oneDNN" not in plain.describe()
        if onednn_available():
            assert fast.linear is onednn_linear and "oneDNN linears" in fast.describe()
        got = compare_segmenters(plain, fast, images, prompts, batch=2)
        print(f"cpu_kernels torch vs onednn, slide {slide}: {got.summary()}")
        AgreementRule(min_share=0.999, max_prob_diff=1e-4).check(got)
        assert not got.head_mismatches


def test_unknown_cpu_kernels():
    with pytest.raises(ConfigError, match="parameter 'cpu_kernels' must be one of auto, onednn, "
                       "torch, not 'mkl'$") as err:
        build_config(dict(cpu_kernels="mkl"))
    assert "\n" not in str(err.value)
