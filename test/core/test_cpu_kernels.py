"""core.cpu_kernels and the ``cpu_kernels`` setting: oneDNN's linear is
F.linear's arithmetic (checked in float64), it is chosen only where it
applies, the C heap keeps freed memory on glibc, and a segmenter gives the
same labels with either kernel set. Tiny random models on the CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cass_ros.core import cpu_kernels
from cass_ros.core.agreement import compare_segmenters
from cass_ros.core.config import ConfigError, build_config
from cass_ros.core.c_heap import keep_freed_memory, libc
from cass_ros.core.cpu_kernels import onednn_available, onednn_linear
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.segmenter import Segmenter
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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
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
        fast = Segmenter(build_config(base), models=tiny_models)
        assert plain.linear is F.linear and "oneDNN" not in plain.describe()
        if onednn_available():
            assert fast.linear is onednn_linear and "oneDNN linears" in fast.describe()
        got = compare_segmenters(plain, fast, images, prompts, batch=2)
        print(f"cpu_kernels torch vs onednn, slide {slide}: {got.summary()}")
        assert got.label_agreement >= 0.999, got.summary()
        assert got.max_prob_diff <= 1e-4, got.summary()
        assert not got.head_mismatches


def test_unknown_cpu_kernels():
    with pytest.raises(ConfigError, match="parameter 'cpu_kernels' must be one of onednn, torch"):
        build_config(dict(cpu_kernels="mkl"))
