"""``sanakit generate``: text → PNG files with a diffusers-format Sana pipeline folder.

Each prompt ``i`` gets ``--num-images`` images with seeds ``seed, seed + 1, ...`` (the same seeds
for every prompt), written as ``OUT/{i:04d}-{seed}.png`` (or to ``OUT`` itself when it ends in
``.png`` and one image is made) with the prompt, seed and settings in the PNG text chunks.
Arguments are checked before any model is loaded; heavy imports happen only in :func:`run`.
The request is then validated against the folder's config files (sampler, sizes), and a size the
model was not made for or whose images cannot fit in memory is refused (``--force`` skips that),
all before any weights are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sanakit.config import check_output_folder
from sanakit.errors import SanakitError

if TYPE_CHECKING:
    from PIL.PngImagePlugin import PngInfo

    from sanakit.pipeline import PipelineSpec, Plan, TextToImage

DOWNSAMPLE = 32  # DC-AE: image sides must be multiples of 32 without resolution binning
DTYPES = ("bf16", "fp32")
# The flag of each TextToImage argument, so errors speak the command line's words.
FLAGS = {
    "negative_prompt": "--negative-prompt",
    "guidance_scale": "--guidance",
    "steps": "--steps",
    "sampler": "--sampler",
    "flow_shift": "--flow-shift",
    "height": "--height",
    "width": "--width",
}
# Without --force, a sampled area above this multiple of the model's largest aspect bucket (twice
# its side) is refused: the model never saw such sizes.
MAX_AREA_FACTOR = 4
# Resolution binning that samples more than this multiple of the requested area gets a note.
BINNING_NOTE_FACTOR = 4


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images from text prompts",
        description="Generate PNG images from text prompts with a Sana model folder.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt (or use --prompts-file)")
    parser.add_argument(
        "--prompts-file", type=Path, help="text file with one prompt per line (blank lines skipped)"
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="diffusers-format Sana pipeline folder"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs"),
        help="output folder, or a .png file for a single image (default: outputs)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    parser.add_argument(
        "--steps", type=int, help="sampler steps (default 20; 2 for the scm sampler)"
    )
    parser.add_argument("--guidance", type=float, default=4.5, help="guidance scale (default 4.5)")
    parser.add_argument("--height", type=int, help="image height in px (default: model native)")
    parser.add_argument("--width", type=int, help="image width in px (default: model native)")
    parser.add_argument(
        "--sampler",
        choices=("dpm", "euler", "scm"),
        help="sampler (default: from the model's scheduler config)",
    )
    parser.add_argument(
        "--flow-shift", type=float, help="flow shift of dpm/euler (default: scheduler config)"
    )
    parser.add_argument("--negative-prompt", default="", help="negative prompt for CFG")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument(
        "--dtype", choices=DTYPES, help="weights dtype (default: bf16 on cuda, fp32 on cpu)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--lora",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="apply an adapter: a LoRA (pytorch_lora_weights.safetensors, diffusers/PEFT format) "
        "or a LoKr (LyCORIS) file or the folder holding it; repeatable (adapters stack)",
    )
    parser.add_argument(
        "--lora-scale", type=float, default=1.0, help="strength of every --lora (default 1.0)"
    )
    parser.add_argument(
        "--no-resolution-binning",
        dest="resolution_binning",
        action="store_false",
        help="sample at exactly --height x --width (multiples of 32) instead of the nearest "
        "aspect bucket followed by a resize",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (regional; the first image pays the compile "
        "time, worth it for many images)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"skip the size checks: sample above {MAX_AREA_FACTOR}x the area of the model's "
        "largest bucket, or when the estimated memory exceeds what the device has free",
    )
    parser.set_defaults(func=run)


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    """The positional prompt (if any) followed by the non-blank lines of ``prompts_file``."""
    prompts = [] if prompt is None else [prompt]
    if prompts_file is not None:
        try:
            lines = prompts_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise SanakitError(f"{prompts_file}: cannot read the prompts file ({err})") from err
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts or not all(p.strip() for p in prompts):
        source = f"{prompts_file} has no non-blank line" if prompts_file else "no prompt given"
        raise SanakitError(f"{source}; pass a prompt or --prompts-file with one prompt per line")
    return prompts


def check_args(args: argparse.Namespace) -> None:
    """Cheap checks, before any model is loaded."""
    for name in ("steps", "num_images", "height", "width"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SanakitError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not args.resolution_binning:
        for name in ("height", "width"):
            value = getattr(args, name)
            if value is not None and value % DOWNSAMPLE:
                raise SanakitError(
                    f"--{name} {value} is not a multiple of {DOWNSAMPLE} (needed with "
                    f"--no-resolution-binning); use e.g. {max(1, round(value / 32)) * 32}"
                )
    for adapter in args.lora:
        if not adapter.exists():
            raise SanakitError(f"--lora {adapter}: no such file or folder")
    model = args.model
    if not model.is_dir():
        raise SanakitError(f"--model {model}: no such folder; pass a diffusers-format Sana folder")
    if not (model / "transformer").is_dir():
        raise SanakitError(
            f"--model {model}: no transformer/ subfolder; pass a diffusers-format Sana pipeline "
            "folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )


def output_paths(out: Path, count: int, prompts: int, seeds: list[int]) -> list[Path]:
    """``out/{i:04d}-{seed}.png`` per (prompt i, seed), or ``out`` for a single ``.png`` (that
    is not an existing folder). Refuses an ``out`` that cannot be written before any work."""
    if out.suffix.lower() == ".png" and not out.is_dir():
        if count != 1:
            raise SanakitError(
                f"--out {out} names one file but {count} images will be made; pass a folder"
            )
        if not out.exists():  # an existing .png file is overwritten
            check_output_folder(out, "--out")  # its folder must be creatable
        return [out]
    if out.exists() and not out.is_dir():
        raise SanakitError(
            f"--out {out} is an existing file; pass a folder, or a .png file name for one image"
        )
    check_output_folder(out, "--out")
    return [out / f"{i:04d}-{seed}.png" for i in range(prompts) for seed in seeds]


def _size_words(plan: Plan) -> str:
    return f"--height {plan.size[0]} --width {plan.size[1]}"


def check_size(plan: Plan, spec: PipelineSpec) -> None:
    """Refuses a sampled area above ``MAX_AREA_FACTOR`` x the model's largest bucket (only
    reachable with ``--no-resolution-binning``: binning always samples at a bucket)."""
    from sanakit.data.buckets import bucket_table

    # the largest area; among equal areas the squarest (1024x1024 rather than 512x2048)
    largest = max(
        bucket_table(spec.base_resolution).values(),
        key=lambda hw: (hw[0] * hw[1], -abs(hw[0] - hw[1])),
    )
    (height, width), area = plan.sample_size, largest[0] * largest[1]
    if height * width > MAX_AREA_FACTOR * area:
        side = 2 * spec.base_resolution
        raise SanakitError(
            f"{_size_words(plan)}: {height * width / area:.1f}x the area of the model's largest "
            f"bucket ({largest[0]}x{largest[1]}), far beyond the sizes it was trained on; use at "
            f"most {MAX_AREA_FACTOR}x (e.g. {side}x{side}), drop --no-resolution-binning, or "
            "pass --force"
        )


def available_memory(device: str) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or the system's MemAvailable on the CPU
    (None when unknown)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(
    plan: Plan, spec: PipelineSpec, images: int, element_size: int, device: str
) -> None:
    """Refuses a request whose estimated memory (:func:`sanakit.pipeline.estimate_memory`)
    exceeds what ``device`` has free."""
    from sanakit.pipeline import estimate_memory

    free = available_memory(device)
    need = estimate_memory(plan, spec, images, element_size)
    if free is not None and need > free:
        gib = 1024**3
        raise SanakitError(
            f"{_size_words(plan)} with --num-images {images}: about {need / gib:.1f} GiB needed "
            f"(weights {spec.weight_bytes / gib:.1f} GiB, then sampling, decoding and resizing) "
            f"but {device} has {free / gib:.1f} GiB free; use a smaller size or fewer images, "
            "or pass --force"
        )


def binning_note(plan: Plan) -> str | None:
    """One line when resolution binning samples far more pixels than requested (e.g. 64x96 at
    the 832x1216 bucket), suggesting ``--no-resolution-binning``; None otherwise."""
    (height, width), (sampled_h, sampled_w) = plan.size, plan.sample_size
    ratio = sampled_h * sampled_w / (height * width)
    if ratio <= BINNING_NOTE_FACTOR:
        return None
    exact_h, exact_w = (
        max(DOWNSAMPLE, round(side / DOWNSAMPLE) * DOWNSAMPLE) for side in plan.size
    )
    how = "" if (exact_h, exact_w) == plan.size else f" --height {exact_h} --width {exact_w}"
    return (
        f"note: {height}x{width} is sampled at the model's {sampled_h}x{sampled_w} bucket "
        f"({ratio:.3g}x the pixels) and resized down; pass --no-resolution-binning{how} to "
        f"sample at {exact_h}x{exact_w} (faster, but the model was trained near "
        f"{sampled_h}x{sampled_w})"
    )


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, str]:
    """``--device`` (default cuda when available) and ``--dtype`` (default bf16 on cuda, fp32 on
    the CPU); a cuda device without CUDA is an error."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SanakitError(f"--device {device}: CUDA is not available; use --device cpu")
    return device, dtype or ("bf16" if device.startswith("cuda") else "fp32")


def load_pipeline(
    model: Path, loras: list[Path], lora_scale: float, device: str, dtype_name: str
) -> TextToImage:
    """The pipeline folder ``model`` in ``dtype_name`` on ``device`` with every adapter of
    ``loras`` applied at ``lora_scale`` (the adapters stack)."""
    import torch

    from sanakit.pipeline import TextToImage

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    pipe = TextToImage.from_pretrained(model, dtype=dtype, device=device)
    if loras:
        from sanakit.adapters import load_adapter_into

        for adapter in loras:
            load_adapter_into(pipe.transformer, adapter, scale=lora_scale)
    return pipe


def png_info(meta: dict[str, object]) -> PngInfo:
    """PNG text chunks: every key of ``meta`` (None as "") and all of it as JSON in
    ``parameters``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in meta.items():
        info.add_text(key, "" if value is None else str(value))
    info.add_text("parameters", json.dumps(meta))
    return info


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompt, args.prompts_file)
    check_args(args)
    seeds = [args.seed + j for j in range(args.num_images)]
    paths = output_paths(args.out, len(prompts) * args.num_images, len(prompts), seeds)

    from tqdm import tqdm

    from sanakit import __version__
    from sanakit.pipeline import PipelineSpec

    spec = PipelineSpec.read(args.model)  # config files only: no weights yet
    plan = spec.resolve(
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance_scale=args.guidance,
        sampler=args.sampler,
        flow_shift=args.flow_shift,
        use_resolution_binning=args.resolution_binning,
        names=FLAGS,
    )
    device, dtype_name = device_and_dtype(args.device, args.dtype)
    if not args.force:
        check_size(plan, spec)
        check_memory(plan, spec, args.num_images, 2 if dtype_name == "bf16" else 4, device)
    note = binning_note(plan) if args.resolution_binning else None
    if note:
        print(f"sanakit: {note}", file=sys.stderr)
    pipe = load_pipeline(args.model, args.lora, args.lora_scale, device, dtype_name)
    if args.compile:
        pipe.transformer.compile_blocks()  # after the adapters: they are traced with the blocks
    settings = {
        "negative_prompt": args.negative_prompt,
        "steps": plan.steps,
        "guidance_scale": plan.guidance_scale,
        "height": plan.size[0],
        "width": plan.size[1],
        "sampled_height": plan.sample_size[0],
        "sampled_width": plan.sample_size[1],
        "sampler": plan.sampler,
        "flow_shift": plan.flow_shift,
        "dtype": dtype_name,
        "model": str(args.model),
        "lora": ",".join(str(a) for a in args.lora) or None,
        "lora_scale": args.lora_scale if args.lora else None,
        "sanakit_version": __version__,
    }

    bar = tqdm(total=len(prompts) * plan.steps, desc="generate", unit="step")
    written = 0
    try:
        for i, prompt in enumerate(prompts):
            images = pipe(
                prompt,
                negative_prompt=args.negative_prompt,
                height=plan.size[0],
                width=plan.size[1],
                steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                seed=args.seed,
                num_images_per_prompt=args.num_images,
                sampler=plan.sampler,
                flow_shift=args.flow_shift,
                use_resolution_binning=args.resolution_binning,
                callback=lambda step, total, latents: bar.update(1),
            )
            for j, image in enumerate(images):
                meta = {"prompt": prompt, "seed": seeds[j], **settings}
                path = paths[i * args.num_images + j]
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path, pnginfo=png_info(meta))
                written += 1
    finally:
        bar.close()
    where = paths[0] if written == 1 else args.out
    print(f"wrote {written} image{'s' * (written != 1)} to {where}")
    return 0
