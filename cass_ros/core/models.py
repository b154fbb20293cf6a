"""Loading the two frozen backbones: CLIP (open_clip) and DINO (timm).

Weights come from the hubs (``clip_weights: openai``, ``dino_weights: hub``),
from local files, or, when asked with the explicit value ``random``, from a
random initialisation (tests and benchmarks only: the output is meaningless).
There is never a silent fallback: weights that cannot be had raise
WeightsError naming the parameter to change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import nn

from .config import CassConfig

log = logging.getLogger(__name__)

RANDOM = "random"
HUB = "hub"


class WeightsError(RuntimeError):
    """Model weights that cannot be loaded; the message names the parameter."""


@dataclass
class CassModels:
    """The frozen backbones and what identifies them."""

    clip: nn.Module            # open_clip CLIP (visual + text towers)
    dino: nn.Module            # timm VisionTransformer
    tokenizer: Callable[[list[str]], torch.Tensor]
    clip_id: str               # identifies the text tower, for the text-embedding cache
    description: str           # human-readable, for logs and diagnostics
    random_weights: bool = False
    _sha256: str | None = field(default=None, repr=False, compare=False)

    def to(self, device: torch.device) -> "CassModels":
        self.clip.to(device)
        self.dino.to(device)
        return self

    def weights_sha256(self) -> str:
        """sha256 (hex) of both backbones' weights as loaded: for every
        tensor of CLIP's state dict, then DINO's, in key order, its key,
        dtype, shape and bytes. Equal for equal weights whatever they were
        loaded from (file, hub, seed), so a map can refuse features of
        another model (docs/ros-interface.md, "Language features"). Hashed
        once, on first use (about 1 s for ViT-B/16 + ViT-B/8)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for model in (self.clip, self.dino):
                for key, tensor in sorted(model.state_dict().items()):
                    t = tensor.detach().to("cpu").contiguous()
                    digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
                    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._sha256 = digest.hexdigest()
        return self._sha256


# ---------------------------------------------------------------- CLIP

def _clip_state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict with OpenAI / open_clip key names from a state-dict
    file or an OpenAI TorchScript archive."""
    if _is_torchscript(path):
        # OpenAI's released files are TorchScript archives.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        # A scripted open_clip model carries its causal mask as a buffer; OpenAI's files don't.
        state.pop("attn_mask", None)
        return state
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return _unwrap_state_dict(obj)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled code (``*/code/``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name or name.endswith("constants.pkl") for name in zf.namelist())


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "teacher"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("not a state dict of tensors")
    prefixes = ("module.", "backbone.")
    out = {}
    for k, v in obj.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def clip_from_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build CLIP with the architecture the state dict implies (OpenAI key
    names, QuickGELU) and load it the way OpenAI's loader does: its linear,
    convolution and attention weights pass through fp16 (as the reference's
    loader does, docs/algorithm.md section 8); the model is then fp32."""
    from open_clip.model import build_model_from_openai_state_dict

    model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True)
    return model.float().eval()


def load_clip(config: CassConfig) -> tuple[nn.Module, str, str]:
    """(model, cache id, description)."""
    import open_clip

    weights = config.clip_weights
    if weights == RANDOM:
        model = open_clip.create_model(config.clip_model, pretrained=None)
        return model.float().eval(), f"{config.clip_model}:random", f"{config.clip_model} (RANDOM weights)"
    path = Path(os.path.expanduser(weights))
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors") or path.exists():
        if not path.is_file():
            raise WeightsError(f"clip_weights file {path} does not exist: set parameter "
                               "'clip_weights' to an existing checkpoint, 'openai', or 'random'")
        try:
            model = clip_from_state_dict(_clip_state_dict_from_file(path))
        except Exception as e:  # noqa: BLE001 - any failure here is a bad checkpoint
            raise WeightsError(f"clip_weights file {path} is not a CLIP checkpoint with OpenAI / "
                               f"open_clip key names ({type(e).__name__}: {e}); fix parameter "
                               "'clip_weights'") from None
        return model, f"file:{_file_digest(path)}", f"CLIP from {path}"
    try:
        model = open_clip.create_model(
            config.clip_model, pretrained=weights, force_quick_gelu=(weights == "openai"),
            cache_dir=config.weights_cache_dir or None, require_pretrained=True)
    except Exception as e:  # noqa: BLE001 - hub, network and tag errors alike
        raise WeightsError(
            f"cannot load CLIP weights '{weights}' for {config.clip_model} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); set parameter 'clip_weights' to a local "
            "checkpoint file, or pre-download them into 'weights_cache_dir' (see README)") from None
    return model.float().eval(), f"{config.clip_model}:{weights}", f"{config.clip_model} ({weights})"


# ---------------------------------------------------------------- DINO

def dino_from_state_dict(state_dict: dict[str, torch.Tensor], model_name: str) -> nn.Module:
    """Build a timm ViT with the architecture the DINO-style state dict
    implies (width, depth, patch and pretrained grid; heads of width 64, as
    in every DINO ViT) and load it. A ``head.*`` projection is ignored."""
    import timm

    sd = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    width = sd["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    patch = sd["patch_embed.proj.weight"].shape[-1]
    grid = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
    model = timm.create_model(
        model_name, pretrained=False, num_classes=0, embed_dim=width, depth=depth,
        num_heads=max(1, width // 64), patch_size=patch, img_size=grid * patch)
    model.load_state_dict(sd, strict=True)
    return model.float().eval()


def load_dino(config: CassConfig) -> tuple[nn.Module, str]:
    """(model, description)."""
    import timm

    weights = config.dino_weights
    if weights == RANDOM:
        model = timm.create_model(config.dino_model, pretrained=False, num_classes=0)
        return model.float().eval(), f"{config.dino_model} (RANDOM weights)"
    if weights == HUB:
        try:
            kwargs: dict[str, Any] = {"num_classes": 0}
            if config.weights_cache_dir:
                kwargs["cache_dir"] = config.weights_cache_dir
            model = timm.create_model(config.dino_model, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - hub, network and name errors alike
            raise WeightsError(
                f"cannot load DINO weights for {config.dino_model} from the hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); set parameter "
                "'dino_weights' to a local checkpoint file, or pre-download them into "
                "'weights_cache_dir' (see README)") from None
        return model.float().eval(), f"{config.dino_model} (hub)"
    path = Path(os.path.expanduser(weights))
    if not path.is_file():
        raise WeightsError(f"dino_weights file {path} does not exist: set parameter "
                           "'dino_weights' to an existing checkpoint, 'hub', or 'random'")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        model = dino_from_state_dict(_unwrap_state_dict(obj), config.dino_model)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad checkpoint
        raise WeightsError(f"dino_weights file {path} is not a DINO ViT checkpoint with DINO key "
                           f"names ({type(e).__name__}: {e}); fix parameter 'dino_weights'") from None
    return model, f"DINO from {path}"


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def load_models(config: CassConfig) -> CassModels:
    """Both backbones as the configuration asks, on the CPU, in eval mode."""
    import open_clip

    clip, clip_id, clip_desc = load_clip(config)
    dino, dino_desc = load_dino(config)
    check_pair(clip, dino)
    random_weights = RANDOM in (config.clip_weights, config.dino_weights)
    if random_weights:
        log.warning("*** cass_ros is running with RANDOM (untrained) weights: the segmentation "
                    "is meaningless. Use this for tests and benchmarks only. ***")
    # The OpenAI ViTs use CLIP's BPE tokenizer; its context follows the model's text tower.
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=int(getattr(clip, "context_length", 77)))
    return CassModels(clip=clip, dino=dino, tokenizer=tokenizer, clip_id=clip_id,
                      description=f"{clip_desc} + {dino_desc}", random_weights=random_weights)


def check_pair(clip: nn.Module, dino: nn.Module) -> None:
    """WeightsError unless CLIP's last layer and DINO's pair heads one to one."""
    last_clip = clip.visual.transformer.resblocks[-1].attn
    last_dino = dino.blocks[-1].attn
    clip_heads, dino_heads = last_clip.num_heads, last_dino.num_heads
    clip_width = last_clip.embed_dim // clip_heads
    dino_width = last_dino.qkv.in_features // dino_heads
    if (clip_heads, clip_width) != (dino_heads, dino_width):
        raise WeightsError(
            f"CLIP has {clip_heads} heads of width {clip_width} but DINO {dino_heads} of width "
            f"{dino_width}; CASS pairs heads one to one: choose matching 'clip_model' / "
            "'dino_model' (ViT-B/16 with ViT-B/8)")


# ---------------------------------------------------------------- random test models

def tiny_random_state_dicts(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """State dicts of small random CLIP and DINO ViTs (width 128, 2 heads of
    64, 2 layers; CLIP patch 16, DINO patch 8, both pretrained at 64 px)
    with the OpenAI and DINO key names. For tests and benchmarks."""
    import open_clip
    import timm

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        clip = open_clip.model.CLIP(
            embed_dim=128, quick_gelu=True,
            vision_cfg=dict(image_size=64, layers=2, width=128, head_width=64, patch_size=16),
            text_cfg=dict(width=128, heads=2, layers=2))
        dino = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0,
                                 embed_dim=128, depth=2, num_heads=2, img_size=64)
    finally:
        torch.random.set_rng_state(gen_state)
    return clip.state_dict(), dino.state_dict()


def save_tiny_random_checkpoints(directory: str | os.PathLike, seed: int = 0) -> tuple[str, str]:
    """Write tiny random checkpoints; returns (clip_path, dino_path). The
    loader infers their architecture, so ``clip_weights`` / ``dino_weights``
    set to these paths give a fast, fully real pipeline."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clip_sd, dino_sd = tiny_random_state_dicts(seed)
    clip_path, dino_path = directory / f"tiny_clip_{seed}.pt", directory / f"tiny_dino_{seed}.pt"
    torch.save(clip_sd, clip_path)
    torch.save(dino_sd, dino_path)
    return str(clip_path), str(dino_path)
