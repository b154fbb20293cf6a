"""The CASS segmenter: images in, label maps and per-class summaries out.

This module only orchestrates; each step of docs/algorithm.md lives in the
module named for it: preprocess (2, 5.2), vit_features (2.4, 3.1 to 3.3,
3.9), spectral (3.3 to 3.8, 6), text (1), presence (4). All crops of all
images in a call go through the ViTs in batches of equal crop size; the
whole-image global vector is computed once per image.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import MODEL, CassConfig, ConfigError, group_names, parse_device
from .c_heap import keep_freed_memory
from .cpu_kernels import LinearShape, onednn_linear, select_linear
from .models import CassModels, check_pair, load_models
from .precision import PrecisionPlan, resolve_plan
from .preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    dino_input,
    normalize,
    resize_short_side,
    slide_windows,
)
from .prepared_prompts import PreparedPrompts
from .prompts import PromptSet
from .queries.decode import decode
from .queries.features import CropFeatures, ImageFeatures
from .result import SegmentationResult
from .spectral import SpectralParams, cass_attention, gaussian_prior, resize_dino_keys
from .temporal import StreamFrame
from .text import TextEmbedder, cluster_names
from .timing import StageTimer
from .vit_features import ClipVision, DinoKeys, LowBlocks

log = logging.getLogger(__name__)

STAGES = ("preprocess", "clip", "dino", "spectral", "head", "postprocess")
# The frame size (H, W) of ``Segmenter.warm_up``: a VGA camera.
WARM_UP_SIZE = (480, 640)


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (config.parse_device's
    grammar) -> a usable torch.device, or ConfigError naming the ``device``
    parameter."""
    kind, index = parse_device(name)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"parameter 'device' is '{name}' but no CUDA device is available "
                          "here; set device to 'cpu' or 'auto'")
    if (index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"parameter 'device' is '{name}' but only "
                          f"{torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the autocast around every ViT pass (None: none, as in
    fp32 and mixed; core.precision.resolve_plan has the whole plan)."""
    return resolve_plan(name, device).autocast


# The rows (tokens x batch) a linear layer is timed with for ``cpu_kernels:
# auto`` (cpu_kernels.choose_linear). Fewer than a frame's: DINO sees 1765
# tokens of a VGA frame at short side 336 (4710 in sliding windows), but the
# timing must stay a fraction of a second; and one count for every size and
# preset keeps one choice per model in a process.
TIMING_ROWS = 1024


def linear_shapes(models: CassModels) -> list[LinearShape]:
    """The trunks' linear layers as (TIMING_ROWS, in, out): every 2-D weight
    of a block of CLIP's and DINO's trunks, each shape once."""
    blocks = [*models.clip.visual.transformer.resblocks, *models.dino.blocks]
    return sorted({(TIMING_ROWS, p.shape[1], p.shape[0])
                   for blk in blocks for p in blk.parameters() if p.dim() == 2})


# Settings that select or place the models (config's MODEL group); the
# others can change on a running segmenter (Segmenter.with_config).
MODEL_SETTINGS = group_names(MODEL)


@dataclass
class _Crop:
    image: int                      # index of its image in the call
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in the resized image


@dataclass
class _Batch:
    """The images of one segment call, resized and on the device."""

    resized: list[np.ndarray]       # (Hr, Wr, 3) uint8 each (2.1)
    pixels: list[torch.Tensor]      # (3, Hr, Wr) uint8 on the device
    clip_full: list[torch.Tensor]   # (3, Hr, Wr) CLIP-normalised (2.2)
    image_g: torch.Tensor | None = None  # (I, E) whole-image global vectors (4.1)


class Segmenter:
    """CASS on one device. Thread-safe for one ``segment`` call at a time."""

    def __init__(self, config: CassConfig, models: CassModels | None = None, *,
                 precision_plan: PrecisionPlan | None = None) -> None:
        """``precision_plan`` overrides what ``precision`` resolves to
        (core.precision): the tests and benchmarks judge CUDA's modes on
        the CPU with it (fp16 autocast runs on the CPU too, slowly)."""
        self.config = config.validate()
        self.device = resolve_device(config.device)
        self.plan = precision_plan or resolve_plan(config.precision, self.device)
        self.amp_dtype = self.plan.autocast
        if models is None:
            models = load_models(config)
        else:
            check_pair(models.clip, models.dino)
        self.models = models.to(self.device)
        self.linear = select_linear(config.cpu_kernels, self.device, self.amp_dtype,
                                    compiled=config.compile != "none",
                                    shapes=linear_shapes(self.models))
        if self.device.type == "cpu" and config.cpu_kernels != "torch":
            keep_freed_memory()
        self.clip = ClipVision(self.models.clip, self.linear, self._low_blocks("clip"))
        self.dino = DinoKeys(self.models.dino, self.linear, self._low_blocks("dino"))
        if config.compile != "none":
            self.clip.compile(config.compile)
            self.dino.compile(config.compile)
        self.params = SpectralParams.from_config(config)
        cache_dir = config.weights_cache_dir if not self.models.random_weights else None
        self.text_embedder = TextEmbedder(self.models.clip, self.models.tokenizer, self.device,
                                          self.models.clip_id, cache_dir or None, self._autocast,
                                          linear=self.linear)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}
        self._prompt_counter = 0
        self._timer = self._new_timer()
        log.info("CASS segmenter ready: %s", self.describe())

    def with_config(self, config: CassConfig) -> Segmenter:
        """A segmenter with other algorithm settings on the same models,
        text-embedding cache and device: cheap, no weights are read. The
        model settings must stay as they are (ConfigError names the first
        that differs). Prompts prepared by ``self`` stay usable, but
        re-prepare them when ``cluster_threshold`` changed."""
        config.validate()
        for name in MODEL_SETTINGS:
            if getattr(config, name) != getattr(self.config, name):
                raise ConfigError(f"parameter '{name}' selects the models: it needs a new "
                                  "Segmenter (a node restart), not a reconfiguration")
        other = copy.copy(self)
        other.config = config
        other.params = SpectralParams.from_config(config)
        if config.gaussian_std != self.config.gaussian_std:
            other._priors = {}
        other._timer = other._new_timer()  # its own: the two may run side by side
        return other

    def warm_up(self, size: tuple[int, int] = WARM_UP_SIZE, batches: Sequence[int] = (1,)) -> float:
        """Segment a grey frame of ``size`` (H, W), twice per batch size, so
        that the compiled trunks (``compile``) are built before the first
        real frame (CUDA graphs, ``reduce-overhead``, record on the second
        run); returns the seconds it took. Another frame size or batch
        compiles again when it first comes (docs/ros-interface.md, compile)."""
        from .prompts import build_prompt_set

        started = time.perf_counter()
        prepared = self.prepare_prompts(build_prompt_set([("object",)], ()), prompt_id=0)
        frame = np.full((*size, 3), 128, np.uint8)
        for n in dict.fromkeys(batches):
            for _ in range(2):
                self.segment([frame] * n, prepared)
        return time.perf_counter() - started

    def _low_blocks(self, trunk: str) -> LowBlocks | None:
        dtype = self.plan.low_dtype(trunk)
        return None if dtype is None else LowBlocks(dtype, self.plan.fp32_tail, self.device.type)

    def describe(self) -> str:
        precision = self.plan.describe()
        compiled = "" if self.config.compile == "none" else f", compile {self.config.compile}"
        compiled += ", oneDNN linears" if self.linear is onednn_linear else ""
        return (f"{self.models.description} on {self.device} ({precision}{compiled}), attention "
                f"{self.config.attention}, short side {self.config.short_side}, "
                + ("whole image" if not self.config.slide_crop else
                   f"sliding {self.config.slide_crop}/{self.config.slide_stride}"))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _new_timer(self) -> StageTimer:
        """The stage timer of result.timings_ms; it waits for the device at
        the end of a stage only on CUDA, where kernels run asynchronously."""
        device = self.device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        return StageTimer(STAGES, sync)

    # ------------------------------------------------------------ prompts

    def prepare_prompts(self, prompt_set: PromptSet, prompt_id: int | None = None) -> PreparedPrompts:
        """Encode (cached per name) and cluster a prompt set: the slow part
        of a prompt change, kept off the per-frame path."""
        names, labels = prompt_set.flat_names()
        text = self.text_embedder.encode(names)  # (C, E) CPU float32
        clusters = cluster_names(text, self.config.cluster_threshold)
        onehot = torch.from_numpy(clusters[None, :] == np.arange(clusters.max() + 1)[:, None])
        if prompt_id is None:
            self._prompt_counter += 1
            prompt_id = self._prompt_counter
        return PreparedPrompts(
            prompt_set=prompt_set, prompt_id=int(prompt_id), names=tuple(names),
            name_labels=torch.tensor(labels, dtype=torch.long, device=self.device),
            text=text.to(self.device), clusters=clusters, cluster_onehot=onehot.to(self.device))

    # ------------------------------------------------------------ inference

    def _prior(self, grid: tuple[int, int]) -> torch.Tensor:
        prior = self._priors.get(grid)
        if prior is None:
            prior = gaussian_prior(grid, self.config.gaussian_std, torch.float32, self.device)
            self._priors[grid] = prior
        return prior

    @staticmethod
    def _check_call(images: Sequence[np.ndarray], output_size: str,
                    streams: Sequence[StreamFrame | None] | None) -> None:
        if output_size not in ("input", "model"):
            raise ValueError(f"output_size must be 'input' or 'model', not {output_size!r}")
        if streams is not None and len(streams) != len(images):
            raise ValueError(f"streams: {len(streams)} entries for {len(images)} images")
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray):
                raise ValueError(f"image {i}: expected a numpy array, got {type(image).__name__}")
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {i}: expected RGB uint8 of shape (H, W, 3), got "
                                 f"{image.dtype} {image.shape}")
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"image {i}: zero size {image.shape[:2]}")

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray], prompts: PreparedPrompts,
                return_probs: bool = False, output_size: str = "input",
                streams: Sequence[StreamFrame | None] | None = None,
                return_heads: bool = False) -> list[SegmentationResult]:
        """Segment RGB uint8 images (H, W, 3), possibly of different sizes:
        exactly ``decode(encode(images), prompts, ...)`` (docs/algorithm.md 10).

        ``output_size``: ``input`` gives labels at each image's size,
        ``model`` at the resized (short side) size. Every result carries
        the call's ``timings_ms`` (STAGES and ``total``). ``streams``: per
        image, its camera's temporal stream and stamp, or None
        (docs/algorithm.md 5.6); images of one stream are applied in the
        order given. ``return_heads`` fills ``result.heads`` with the head
        matching's choice per crop (docs/algorithm.md 3.5), for the device
        comparisons (core.agreement).
        """
        return self.segment_keeping(images, prompts, return_probs, output_size, streams,
                                    return_heads)[0]

    @torch.inference_mode()
    def segment_keeping(self, images: Sequence[np.ndarray], prompts: PreparedPrompts,
                        return_probs: bool = False, output_size: str = "input",
                        streams: Sequence[StreamFrame | None] | None = None,
                        return_heads: bool = False
                        ) -> tuple[list[SegmentationResult], ImageFeatures | None]:
        """``segment``, and the images' features it decoded (None for no
        images): a node keeps each camera's newest to answer queries on."""
        self._check_call(images, output_size, streams)
        if not images:
            return [], None
        self._timer.start()
        features = self._encode(images)
        results = decode(features, prompts, self.config, self._timer, return_probs, output_size,
                         streams)
        timings = self._timer.timings_ms()
        heads = _heads_per_image(features) if return_heads else None
        for i, res in enumerate(results):
            res.timings_ms = dict(timings)
            if heads is not None and heads[i]:
                res.heads = np.stack(heads[i])
        return results, features

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> ImageFeatures:
        """The image half (docs/algorithm.md 10): both trunks, the spectral
        head matching and CLIP's fused last layer for every crop of every
        image; nothing of it depends on the prompts. On the device."""
        self._check_call(images, "input", None)
        self._timer.start()
        return self._encode(images)

    @torch.inference_mode()
    def decode(self, features: ImageFeatures, prompts: PreparedPrompts,
               return_probs: bool = False, output_size: str = "input",
               streams: Sequence[StreamFrame | None] | None = None
               ) -> list[SegmentationResult]:
        """The prompt half (docs/algorithm.md 10): ``features`` of ``encode``
        and a prompt set -> one result per image, what ``segment`` gives for
        those images and prompts. Safe beside a running ``segment`` (its own
        timer; reads the features only)."""
        if output_size not in ("input", "model"):
            raise ValueError(f"output_size must be 'input' or 'model', not {output_size!r}")
        if streams is not None and len(streams) != len(features):
            raise ValueError(f"streams: {len(streams)} entries for {len(features)} images")
        timer = self._new_timer()
        results = decode(features, prompts, self.config, timer, return_probs, output_size,
                         streams)
        timings = timer.timings_ms()
        for res in results:
            res.timings_ms = dict(timings)
        return results

    def _encode(self, images: Sequence[np.ndarray]) -> ImageFeatures:
        cfg = self.config
        with self._timer("preprocess", sync=False):
            batch = self._upload(images)
            groups = self._crop_groups(batch.resized)
        # 4.1: in sliding-window mode the presence prior uses the whole image.
        if cfg.slide_crop and not cfg.crop_global_vector:
            batch.image_g = self._whole_image_vectors(batch.clip_full)  # (I, E)
        crops = tuple(self._encode_crops(size, group, batch) for size, group in groups.items())
        return ImageFeatures(tuple(tuple(img.shape[:2]) for img in images),
                             tuple(tuple(img.shape[:2]) for img in batch.resized), crops)

    def _upload(self, images: Sequence[np.ndarray]) -> _Batch:
        """2.1: the 8-bit short-side resize; the resized images are uploaded
        once and normalised for CLIP on the device."""
        resized = [resize_short_side(img, self.config.short_side) for img in images]
        pixels = [torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)
                  for img in resized]  # (3, H, W) uint8 each
        clip_full = [normalize(x, CLIP_MEAN, CLIP_STD) for x in pixels]
        return _Batch(resized, pixels, clip_full)

    def _crop_groups(self, resized: list[np.ndarray]) -> dict[tuple[int, int], list[_Crop]]:
        """5.2: the crops of every resized image (one per image in
        whole-image mode), grouped by size so that each group is one batch."""
        cfg = self.config
        groups: dict[tuple[int, int], list[_Crop]] = defaultdict(list)
        for i, img in enumerate(resized):
            h, w = img.shape[:2]
            boxes = [(0, h, 0, w)] if not cfg.slide_crop else slide_windows(h, w, cfg.slide_crop,
                                                                             cfg.slide_stride)
            for box in boxes:
                groups[(box[1] - box[0], box[3] - box[2])].append(_Crop(i, box))
        return groups

    def _whole_image_vectors(self, clip_full: list[torch.Tensor]) -> torch.Tensor:
        """One plain CLIP pass per image (images of equal size batched): (I, E)."""
        out: list[torch.Tensor | None] = [None] * len(clip_full)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        with self._timer("clip"):
            for i, x in enumerate(clip_full):
                by_size[tuple(x.shape[-2:])].append(i)
            for members in by_size.values():
                batch = torch.stack([clip_full[i] for i in members])
                with self._autocast():
                    g = self.clip.encode_image(batch).float()
                for j, i in enumerate(members):
                    out[i] = g[j]
        return torch.stack(out)  # type: ignore[arg-type]

    def _encode_crops(self, size: tuple[int, int], crops: list[_Crop], batch: _Batch
                      ) -> CropFeatures:
        """Crops of one size -> their fused patch embeddings P (B, N, E),
        the global vectors of their prior and what the head matching chose."""
        need_dino = self.config.attention != "vanilla"
        with self._timer("preprocess", sync=False):
            clip_in = torch.stack([batch.clip_full[c.image][:, c.box[0]:c.box[1], c.box[2]:c.box[3]]
                                   for c in crops])  # (B, 3, ch, cw)
            if need_dino:
                dino_in = torch.stack([self._dino_crop(c, batch.pixels, batch.resized)
                                       for c in crops])
        with self._timer("clip"), self._autocast():
            x, grid = self.clip.tokens_before_last(clip_in)                       # 3.2
            g_crop = self.clip.global_vector(x).float() if batch.image_g is None else None  # 3.1
            q, k, v = self.clip.last_qkv(x)
        kd = None
        if need_dino:
            with self._timer("dino"):
                with self._autocast():
                    keys_dino, dino_grid = self.dino.last_keys(dino_in)
                kd = resize_dino_keys(keys_dino.float(), dino_grid, grid)         # 3.3
        with self._timer("spectral"):
            heads, info = cass_attention(q.float(), k.float(), v.float(), kd, grid, self.params,
                                         prior=self._prior(grid) if need_dino else None)
        with self._timer("head"):
            with self._autocast():
                patches = self.clip.reduced_output(heads)  # P (B, N, E), 3.9
            g = g_crop if g_crop is not None else batch.image_g[[c.image for c in crops]]
            return CropFeatures(size, grid, tuple(c.image for c in crops),
                                tuple(c.box for c in crops), patches.float(), g,
                                tuple(info.col) if info is not None else ())

    def _dino_crop(self, crop: _Crop, pixels: list[torch.Tensor], resized: list[np.ndarray]
                   ) -> torch.Tensor:
        """DINO's input for one crop (2.3): a square crop is normalised on the
        device as it is; any other goes through Pillow's bicubic resize."""
        y0, y1, x0, x1 = crop.box
        if y1 - y0 == x1 - x0:
            x = normalize(pixels[crop.image][:, y0:y1, x0:x1], IMAGENET_MEAN, IMAGENET_STD)
            s = (x.shape[-1] // self.dino.patch) * self.dino.patch
            return x[:, :s, :s]
        return dino_input(resized[crop.image][y0:y1, x0:x1], self.dino.patch).to(self.device)


def _heads_per_image(features: ImageFeatures) -> list[list[np.ndarray]]:
    """Each image's head choices, one (h,) row per crop in encode's order."""
    heads: list[list[np.ndarray]] = [[] for _ in range(len(features))]
    for grp in features.groups:
        for owner, col in zip(grp.images, grp.heads):
            heads[owner].append(col)
    return heads
