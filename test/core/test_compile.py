"""The ``compile`` setting (issue 8): the ViT trunks through torch.compile
give what the eager trunks give, and a bad value names the parameter. On
the CPU with the tiny random models; one input shape per trunk, so the
compilation (inductor, C++ on the CPU) takes some 20 s on two cores."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cass_ros.core.agreement import AgreementRule, compare_segmenters
from cass_ros.core.config import ConfigError, build_config
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.segmenter import Segmenter


def image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_compiled_trunks_equal_eager(tiny_models, text_cache_dir):
    """Inductor fuses and reorders float32 arithmetic, so the two differ by
    rounding only: measured max |prob diff| 7e-7 and identical labels; the
    bounds leave room for other compilers' choices (1e-4, and a pixel in a
    thousand on an exact tie)."""
    base = dict(device="cpu", short_side=64, weights_cache_dir=text_cache_dir)
    eager = Segmenter(build_config(base), models=tiny_models)
    compiled = Segmenter(build_config(dict(base, compile="default")), models=tiny_models)
    assert compiled.clip._trunk is not compiled.clip._eager_trunk
    assert compiled.dino._trunk is not compiled.dino._eager_trunk
    assert "compile default" in compiled.describe()
    images = [image(96, 128, s) for s in range(3)]
    assert compiled.warm_up(size=(96, 128), batches=(3,)) > 0
    prompts = build_prompt_set([("cat",), ("dog",), ("car",)], background=["sky"])
    got = compare_segmenters(eager, compiled, images, prompts, batch=3)
    print(f"compile default vs eager: {got.summary()}")
    AgreementRule(min_share=0.999, max_prob_diff=1e-4).check(got)
    assert not got.head_mismatches


def test_none_keeps_the_eager_trunks(tiny_models):
    seg = Segmenter(build_config(dict(device="cpu", short_side=64)), models=tiny_models)
    assert seg.config.compile == "none"
    assert seg.clip._trunk is seg.clip._eager_trunk and seg.dino._trunk is seg.dino._eager_trunk


def test_unknown_compile_mode():
    with pytest.raises(ConfigError, match="parameter 'compile' must be one of none, default"):
        build_config(dict(compile="fast"))
