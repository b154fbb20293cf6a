"""Fixed segmentations of the tiny random models, for comparing two runs
whose kernels differ (test/core/test_instruction_sets.py runs this in a
second process held to other instruction sets). The tiny models are built
here for test/conftest.py's ``tiny_models`` too: one recipe."""

from __future__ import annotations

import tempfile

import cv2
import numpy as np

# Whole image and sliding window, with a background name and a threshold,
# so that both kinds of decision of docs/algorithm.md 5.4 are exercised.
SETTINGS = (dict(), dict(slide_crop=32, slide_stride=16))
COMMON = dict(device="cpu", short_side=64, prob_threshold=0.1, cpu_kernels="torch")


def tiny_models(state_dicts=None):
    """CassModels of the tiny random CLIP and DINO (seed 0; ``state_dicts``:
    theirs, already made), built the way the checkpoint loader builds them."""
    import open_clip

    from cass_ros.core.models import (CassModels, clip_from_state_dict, dino_from_state_dict,
                                      tiny_random_state_dicts)

    clip_sd, dino_sd = state_dicts or tiny_random_state_dicts(seed=0)
    return CassModels(clip=clip_from_state_dict(dict(clip_sd)),
                      dino=dino_from_state_dict(dict(dino_sd), "vit_base_patch8_224.dino"),
                      tokenizer=open_clip.tokenizer.SimpleTokenizer(context_length=77),
                      clip_id="tiny-random-seed0", description="tiny random CLIP + DINO (tests)")


def image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def segment_fixed_images() -> dict[str, np.ndarray]:
    """labels_i, probs_i, presence_i of three images in each mode of
    SETTINGS (whole, then sliding), in that order."""
    from cass_ros.core.config import build_config
    from cass_ros.core.prompts import build_prompt_set
    from cass_ros.core.segmenter import Segmenter

    models = tiny_models()
    prompts = build_prompt_set([("cat",), ("dog", "puppy"), ("car",)], background=["sky"])
    images = [image(96, 128, s) for s in range(3)]
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as cache:
        for settings in SETTINGS:
            seg = Segmenter(build_config(dict(COMMON, weights_cache_dir=cache, **settings)),
                            models=models)
            for res in seg.segment(images, seg.prepare_prompts(prompts), return_probs=True):
                i = len(out) // 3
                out.update({f"labels_{i}": res.labels, f"probs_{i}": res.probs,
                            f"presence_{i}": res.presence})
    return out
