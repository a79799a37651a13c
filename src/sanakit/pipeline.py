"""Text → image with a Sana model: encode prompts, sample latents, decode, return PIL images.

:class:`TextToImage` reproduces diffusers' ``SanaPipeline`` (Flow-DPM-Solver or flow Euler with
classifier-free guidance) and ``SanaSprintPipeline`` (sCM few-step sampling with an embedded
guidance scale) on sanakit's own transformer, text encoder and samplers:

1. prompts → Gemma features with the complex human instruction (:class:`sanakit.text.TextEncoder`);
   the negative prompt is encoded without it;
2. resolution binning (optional): ``(H, W)`` → the nearest bucket of Sana's aspect-ratio table for
   ``sample_size * 32`` px (:func:`sanakit.data.buckets.closest_bucket`);
3. noise ``(N, C, H/32, W/32)`` drawn image by image from ``torch.Generator("cpu").manual_seed(s)``
   and 4. sampling, both by :func:`sanakit.sampling.sample_latents` (the path validation and the
   demo share; samplers in :mod:`sanakit.sample`); 5. DC-AE decode; 6. bilinear resize + centre
   crop back to the requested ``(H, W)`` when binned; 7. :func:`sanakit.sampling.to_pil`,
   ``uint8 = round(255 * clamp(x / 2 + 0.5, 0, 1))``.

A request is validated by :func:`resolve_plan` from the configs alone, so
:class:`PipelineSpec` (a folder's config files, no weights) can check a request and estimate its
memory (:func:`estimate_memory`) before anything is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from sanakit.autoencoder import Autoencoder, DCAutoencoder
from sanakit.data.buckets import closest_bucket
from sanakit.errors import SanakitError
from sanakit.models import ModelConfig, SanaTransformer, load_transformer
from sanakit.models.io import read_config, resolve_transformer_dir
from sanakit.sample import Generators, StepCallback
from sanakit.sampling import (
    SAMPLERS,
    Plan,
    SamplerName,
    SamplerSettings,
    read_scheduler_config,
    sample_latents,
    seed_generators,
    to_pil,
)
from sanakit.text import DEFAULT_INSTRUCTION, TextEncoder

DEFAULT_STEPS: dict[str, int] = {"dpm": 20, "euler": 20, "scm": 2}
DEFAULT_GUIDANCE = 4.5  # Sana's and Sana-Sprint's default guidance scale
# diffusers' AutoencoderDC defaults (Sana's f32c32 DC-AE), for vae configs that omit them
_DC_AE_BLOCK_CHANNELS = (128, 256, 512, 512, 1024, 1024)
PIPELINE_PARTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SanakitError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_plan(
    config: ModelConfig,
    settings: SamplerSettings,
    downsample_factor: int,
    *,
    negative_prompt: str | Sequence[str] = "",
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE,
    sampler: SamplerName | None = None,
    flow_shift: float | None = None,
    use_resolution_binning: bool = True,
    names: Mapping[str, str] | None = None,
) -> Plan:
    """Validates a request against a transformer config, the default sampler settings and the
    autoencoder's downsampling, and fills in the defaults (see :meth:`TextToImage.__call__`).

    ``names`` maps argument names (``negative_prompt``, ``guidance_scale``, ``steps``,
    ``sampler``, ``flow_shift``, ``height``, ``width``) to the words errors use for them, so a
    command line can name its flags (``--negative-prompt``, ``--guidance``).
    """

    def word(arg: str) -> str:
        return (names or {}).get(arg, arg)

    name = sampler or settings.sampler
    if name not in SAMPLERS:
        raise SanakitError(f"unknown {word('sampler')} {name!r}; use one of {', '.join(SAMPLERS)}")
    if (name == "scm") != config.guidance_embeds:
        raise SanakitError(
            f"{word('sampler')} 'scm' needs a Sana-Sprint model (guidance_embeds=true); this "
            "flow model samples with 'dpm' or 'euler'"
            if name == "scm"
            else f"{word('sampler')} {name!r} needs a flow model; this Sana-Sprint model "
            "(guidance_embeds=true) samples with 'scm'"
        )
    steps = _positive_int(word("steps"), DEFAULT_STEPS[name] if steps is None else steps)
    do_cfg = name != "scm" and guidance_scale > 1.0
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
    if any(negatives) and not do_cfg:
        raise SanakitError(
            f"{word('negative_prompt')} is only used with classifier-free guidance "
            f"(a dpm/euler sampler and {word('guidance_scale')} > 1)"
        )
    if name == "scm" and flow_shift is not None:
        raise SanakitError(f"{word('flow_shift')} applies to the dpm/euler samplers, not to scm")
    shift = None if name == "scm" else settings.flow_shift
    if flow_shift is not None:
        shift = float(flow_shift)
        if not shift > 0:
            raise SanakitError(f"{word('flow_shift')} must be > 0, got {shift}; 1.0 means no shift")
    base = config.sample_size * downsample_factor
    size = (
        _positive_int(word("height"), base if height is None else height),
        _positive_int(word("width"), base if width is None else width),
    )
    sample_size = closest_bucket(*size, base) if use_resolution_binning else size
    f = downsample_factor
    if sample_size[0] % f or sample_size[1] % f:
        raise SanakitError(
            f"{word('height')} x {word('width')} {size[0]}x{size[1]} must be multiples of the "
            f"autoencoder's downsample factor {f} without resolution binning"
        )
    latent = (sample_size[0] // f, sample_size[1] // f)
    p = config.patch_size
    if latent[0] % p or latent[1] % p:
        raise SanakitError(
            f"{word('height')} x {word('width')} {sample_size[0]}x{sample_size[1]}: latent "
            f"{latent[0]}x{latent[1]} is not divisible by the transformer's patch size {p}; "
            f"use multiples of {f * p}"
        )
    return Plan(name, steps, float(guidance_scale), shift, do_cfg, size, sample_size, latent)


SANAKIT_INFO = "sanakit.json"  # a pixel-shuffle run's export (train/export.py): no vae/ etc.


def read_sanakit_info(root: Path) -> dict[str, Any] | None:
    """The ``sanakit.json`` of a folder exported from a pixel-shuffle run (the demo): the
    autoencoder factor, text-encoder folder, instruction, token window and flow shift that
    replace ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``; None otherwise."""
    path = root / SANAKIT_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SanakitError(f"{path}: unreadable JSON ({err})") from err
    if info.get("autoencoder") != "pixel-shuffle" or not info.get("text_encoder"):
        raise SanakitError(
            f"{path}: not a pixel-shuffle export (needs autoencoder 'pixel-shuffle' and text_encoder)"
        )
    return info


def _check_pipeline_folder(root: Path) -> None:
    if root.is_dir() and read_sanakit_info(root) is not None:
        if not (root / "transformer").is_dir():
            raise SanakitError(f"{root}: no transformer/ subfolder beside {SANAKIT_INFO}")
        return
    if not root.is_dir():
        raise SanakitError(
            f"{root}: model folder not found; pass a diffusers-format Sana pipeline folder "
            f"(with {', '.join(p + '/' for p in PIPELINE_PARTS)})"
        )
    for part in PIPELINE_PARTS:
        if not (root / part).is_dir():
            raise SanakitError(
                f"{root}: no {part}/ subfolder; a Sana pipeline folder needs "
                f"{', '.join(p + '/' for p in PIPELINE_PARTS)}"
            )


def read_dc_ae_config(folder: str | Path) -> tuple[int, int]:
    """``(downsample_factor, decoder_width)`` of a DC-AE folder's ``config.json``: ``2 **
    (stages - 1)`` and ``decoder_block_out_channels[0]`` (diffusers' defaults when absent)."""
    vae_file = Path(folder) / "config.json"
    try:
        vae = json.loads(vae_file.read_text())
    except FileNotFoundError as err:
        raise SanakitError(f"{vae_file}: not found; the vae/ folder needs its config") from err
    except (OSError, json.JSONDecodeError) as err:
        raise SanakitError(f"{vae_file}: unreadable JSON ({err})") from err
    if vae.get("_class_name", "AutoencoderDC") != "AutoencoderDC":
        raise SanakitError(
            f"{vae_file}: the autoencoder is a {vae['_class_name']}, not a DC-AE (AutoencoderDC)"
        )
    encoder = vae.get("encoder_block_out_channels", _DC_AE_BLOCK_CHANNELS)
    decoder = vae.get("decoder_block_out_channels", _DC_AE_BLOCK_CHANNELS)
    return 2 ** (len(encoder) - 1), int(decoder[0])


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline folder's config files say, read without loading any weights.

    ``downsample_factor`` is the DC-AE's ``2 ** (stages - 1)``; ``decoder_width`` the channels
    of its full-resolution decoder stage (``decoder_block_out_channels[0]``, which dominates the
    decoder's memory); ``weight_bytes`` the size of the weight files of every part.
    """

    transformer: ModelConfig
    settings: SamplerSettings
    downsample_factor: int
    decoder_width: int
    weight_bytes: int

    @classmethod
    def read(cls, folder: str | Path) -> PipelineSpec:
        root = Path(folder)
        _check_pipeline_folder(root)
        info = read_sanakit_info(root)
        transformer = read_config(resolve_transformer_dir(root / "transformer"))
        if info is not None:  # pixel-shuffle: no decoder (3 output channels)
            settings = _info_settings(info, transformer)
            downsample_factor, decoder_width = int(info["pixel_shuffle_factor"]), 3
        else:
            settings = read_scheduler_config(root / "scheduler")
            downsample_factor, decoder_width = read_dc_ae_config(root / "vae")
        weights = sum(
            path.stat().st_size
            for part in ("transformer", "vae", "text_encoder")
            for path in (root / part).glob("*")
            if path.suffix in (".safetensors", ".bin")
        )
        return cls(transformer, settings, downsample_factor, decoder_width, weights)

    @property
    def base_resolution(self) -> int:
        """Pixel side of the model's native square (:attr:`TextToImage.base_resolution`)."""
        return self.transformer.sample_size * self.downsample_factor

    def resolve(self, **request: Any) -> Plan:
        """:func:`resolve_plan` for this folder's model (keyword arguments as there)."""
        return resolve_plan(self.transformer, self.settings, self.downsample_factor, **request)


def _info_settings(info: dict[str, Any], config: ModelConfig) -> SamplerSettings:
    """A pixel-shuffle export's default sampler: Flow-DPM-Solver with its validation shift
    (scm for a Sprint model)."""
    if config.guidance_embeds:
        return SamplerSettings("scm")
    return SamplerSettings("dpm", flow_shift=float(info.get("flow_shift", 1.0)))


def _resized_size(sample: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The size :func:`resize_and_center_crop` resizes ``sample`` to before cropping ``size``."""
    (h, w), (height, width) = sample, size
    ratio = max(height / h, width / w)
    return int(h * ratio), int(w * ratio)


def estimate_memory(
    plan: Plan, spec: PipelineSpec, images: int, element_size: int, *, weights: bool = True
) -> int:
    """A rough upper estimate, in bytes, of the memory one call making ``images`` images of
    ``plan`` needs on its device: the weights, plus the largest of

    - transformer activations: ``images x (2 with CFG) x tokens x hidden x 10`` elements (the
      GLUMBConv feed-forward widens each token ~5x, with its input, gate and output alive);
    - DC-AE decoding: ``3 x images x H x W x decoder_width`` elements at the sampled size (a
      full-resolution residual block's input, hidden and output);
    - resizing a binned image back: ``images x 3 x (H' x W' + H x W)`` elements at the resized
      size ``H' x W'`` (before the crop), plus the decoded images;
    - the PNG pixels: ``images x H x W x 3`` as float32 and uint8.
    """
    cfg = spec.transformer
    tokens = (plan.latent_size[0] // cfg.patch_size) * (plan.latent_size[1] // cfg.patch_size)
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    passes = images * (2 if plan.do_cfg else 1)
    transformer = passes * tokens * hidden * 10 * element_size
    sampled = plan.sample_size[0] * plan.sample_size[1]
    decode = 3 * images * sampled * spec.decoder_width * element_size
    resize = images * 3 * sampled * element_size
    if plan.sample_size != plan.size:
        resized_h, resized_w = _resized_size(plan.sample_size, plan.size)
        resize += images * 3 * (resized_h * resized_w + plan.size[0] * plan.size[1]) * element_size
    pixels = images * plan.size[0] * plan.size[1] * 3 * (4 + 1)
    return (spec.weight_bytes if weights else 0) + max(transformer, decode, resize, pixels)


def resize_and_center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, h, w) → (B, C, height, width): bilinear resize (no corner alignment) by
    ``r = max(height / h, width / w)`` to ``(int(h r), int(w r))``, then a centre crop; the
    inverse of resolution binning (diffusers' ``resize_and_crop_tensor``)."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    new_h, new_w = _resized_size((h, w), (height, width))
    images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return images[:, :, top : top + height, left : left + width]


class TextToImage:
    """A Sana text-to-image pipeline on sanakit parts.

    Args:
        transformer: the denoiser (flow velocity model, or a Sprint model with
            ``guidance_embeds``).
        text_encoder: prompt encoder whose ``hidden_size`` is ``caption_channels``.
        autoencoder: decodes ``(N, C, h, w)`` latents to images (C = ``in_channels``).
        settings: the default sampler (``from_pretrained`` reads it from the scheduler config).
    """

    def __init__(
        self,
        transformer: SanaTransformer,
        text_encoder: TextEncoder,
        autoencoder: Autoencoder,
        settings: SamplerSettings | None = None,
    ) -> None:
        config = transformer.config
        if autoencoder.latent_channels != config.in_channels:
            raise SanakitError(
                f"autoencoder has {autoencoder.latent_channels} latent channels but the "
                f"transformer expects in_channels={config.in_channels}"
            )
        if text_encoder.hidden_size != config.caption_channels:
            raise SanakitError(
                f"text encoder width {text_encoder.hidden_size} != transformer "
                f"caption_channels {config.caption_channels}"
            )
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.settings = settings or SamplerSettings("scm" if config.guidance_embeds else "dpm")

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
    ) -> TextToImage:
        """Loads a diffusers-format Sana pipeline folder (``transformer/``, ``vae/``,
        ``text_encoder/``, ``tokenizer/``, ``scheduler/``), every part in ``dtype`` on ``device``.
        Never downloads."""
        root = Path(folder)
        _check_pipeline_folder(root)
        transformer = load_transformer(root / "transformer", torch_dtype=dtype, device=device)
        info = read_sanakit_info(root)
        if info is not None:
            from sanakit.autoencoder import load_autoencoder

            text_encoder = TextEncoder.from_pretrained(
                info["text_encoder"],
                dtype=dtype,
                device=device,
                instruction=info.get("instruction", DEFAULT_INSTRUCTION),
                max_length=int(info.get("text_max_length", 300)),
            )
            autoencoder = load_autoencoder(
                "pixel-shuffle",
                factor=int(info["pixel_shuffle_factor"]),
                dtype=dtype,
                device=device,
            )
            return cls(
                transformer, text_encoder, autoencoder, _info_settings(info, transformer.config)
            )
        settings = read_scheduler_config(root / "scheduler")
        text_encoder = TextEncoder.from_pretrained(root, dtype=dtype, device=device)
        autoencoder = DCAutoencoder.from_pretrained(root / "vae", dtype=dtype, device=device)
        return cls(transformer, text_encoder, autoencoder, settings)

    @property
    def base_resolution(self) -> int:
        """Pixel side of the model's native square: ``sample_size * downsample factor``."""
        return self.transformer.config.sample_size * self.autoencoder.downsample_factor

    def binned_size(self, height: int, width: int) -> tuple[int, int]:
        """The bucket ``(H, W)`` of Sana's aspect table for :attr:`base_resolution` whose ratio
        is nearest ``height / width`` (diffusers' ``classify_height_width_bin``)."""
        return closest_bucket(height, width, self.base_resolution)

    def resolve(
        self,
        *,
        negative_prompt: str | Sequence[str] = "",
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        sampler: SamplerName | None = None,
        flow_shift: float | None = None,
        use_resolution_binning: bool = True,
        names: Mapping[str, str] | None = None,
    ) -> Plan:
        """Validates a request and fills in the defaults, without running anything
        (:func:`resolve_plan` on this pipeline's parts; :meth:`__call__` runs it first)."""
        return resolve_plan(
            self.transformer.config,
            self.settings,
            self.autoencoder.downsample_factor,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            flow_shift=flow_shift,
            use_resolution_binning=use_resolution_binning,
            names=names,
        )

    def _generators(
        self, seed: int | Sequence[int] | None, generator: Generators | None, prompts: int, n: int
    ) -> Generators:
        """Image ``k = i * n + j`` (prompt i, copy j) gets seed ``seed + j`` (same seeds for every
        prompt, so prompts are comparable), or ``seed[k]`` from a list."""
        if generator is not None:
            if seed is not None:
                raise SanakitError("pass either seed or generator, not both")
            return generator
        if seed is None:
            seed = 0
        if isinstance(seed, int):
            seeds = [seed + j for _ in range(prompts) for j in range(n)]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != prompts * n:
                raise SanakitError(
                    f"got {len(seeds)} seeds for {prompts * n} images "
                    f"({prompts} prompts x {n} per prompt); pass one seed per image or an int"
                )
        return seed_generators(seeds)

    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] = "",
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        seed: int | Sequence[int] | None = None,
        generator: Generators | None = None,
        num_images_per_prompt: int = 1,
        sampler: SamplerName | None = None,
        flow_shift: float | None = None,
        use_resolution_binning: bool = True,
        callback: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Generates ``len(prompts) * num_images_per_prompt`` images, prompt-major
        (prompt 0's copies first).

        Args:
            prompts: one prompt or a list.
            negative_prompt: the unconditional prompt of CFG (one for all, or one per prompt);
                only with a flow sampler and ``guidance_scale > 1``.
            height, width: output size in pixels (default :attr:`base_resolution`). Without
                binning they must be multiples of 32; with it, any size (the image is sampled
                at the nearest bucket, then resized and centre-cropped).
            steps: sampler steps (default 20 for dpm/euler, 2 for scm).
            guidance_scale: CFG scale for dpm/euler (<= 1: no CFG); for scm the value fed to
                the guidance embedding (times ``guidance_embeds_scale``).
            seed / generator: an int seed (copy j of every prompt uses ``seed + j``), one seed
                per image, or torch generators as in diffusers; default seed 0.
            sampler / flow_shift: override the scheduler config's sampler and shift.
            callback: ``callback(step, steps, latents)`` after every step.
        """
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            raise SanakitError("no prompts given; pass at least one prompt")
        n = _positive_int("num_images_per_prompt", num_images_per_prompt)
        negatives = [negative_prompt] * len(texts) if isinstance(negative_prompt, str) else None
        if negatives is None:
            negatives = list(negative_prompt)
            if len(negatives) != len(texts):
                raise SanakitError(
                    f"got {len(negatives)} negative prompts for {len(texts)} prompts"
                )
        plan = self.resolve(
            negative_prompt=negatives,
            height=height,
            width=width,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            flow_shift=flow_shift,
            use_resolution_binning=use_resolution_binning,
        )
        generators = self._generators(seed, generator, len(texts), n)

        with torch.inference_mode():
            text, mask = self.text_encoder.encode(texts)  # (P, L, D), (P, L)
            cond = (text.repeat_interleave(n, 0), mask.repeat_interleave(n, 0))  # (P n, ...)
            uncond = None
            if plan.do_cfg:
                u_text, u_mask = self.text_encoder.encode_negative(negatives)
                uncond = (u_text.repeat_interleave(n, 0), u_mask.repeat_interleave(n, 0))
            latents = sample_latents(
                self.transformer,
                cond,
                uncond,
                plan,
                generators,
                settings=self.settings,
                callback=callback,
            )
            images = self.autoencoder.decode(latents)  # (N, 3, H', W') in [-1, 1]
            if plan.sample_size != plan.size:
                images = resize_and_center_crop(images, *plan.size)
        return to_pil(images)
