"""``sanakit eval``: generate a prompt x seed grid with a model (and optionally a second one),
score it with CLIP score / FID / KID / the demo classifier, and write a JSON report plus a CSV
with one row per image (:mod:`sanakit.metrics.evaluate`).

Every input (folders, metric models, reference images, sampling request) is checked before any
image is generated; images already generated for the same request are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sanakit.errors import SanakitError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a model's images (CLIP score, FID/KID); compare two models",
        description="Generate images for a prompts file with the same code path as `sanakit "
        "generate`, score them and write a JSON report and a per-image CSV. With --compare, a "
        "second model samples the same prompts and seeds and the paired difference is reported.",
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="diffusers-format Sana pipeline folder"
    )
    parser.add_argument(
        "--lora", action="append", type=Path, default=[], metavar="PATH", help="adapter for --model"
    )
    parser.add_argument(
        "--lora-scale", type=float, default=1.0, help="strength of --lora and --compare-lora"
    )
    parser.add_argument("--compare", type=Path, help="a second pipeline folder, side by side")
    parser.add_argument(
        "--compare-lora",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="adapter for --compare (e.g. the same base with another LoRA)",
    )
    parser.add_argument(
        "--prompts", type=Path, required=True, help="text file, one prompt per line"
    )
    parser.add_argument(
        "--clip-model", type=Path, help="local CLIP folder (transformers CLIPModel): CLIP score"
    )
    parser.add_argument(
        "--reference", type=Path, help="folder of reference images: FID and KID against it"
    )
    parser.add_argument(
        "--fid-model",
        type=Path,
        help="InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth) for standard FID; "
        "default: the --clip-model's image features (FD in CLIP space)",
    )
    parser.add_argument(
        "--fid-images", type=int, help="use at most this many reference images (default all)"
    )
    parser.add_argument(
        "--demo-score",
        action="store_true",
        help="score demo prompts with the demo's colour/shape classifier (sanakit demo models)",
    )
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--steps", type=int, help="sampler steps (default as sanakit generate)")
    parser.add_argument("--sampler", choices=("dpm", "euler", "scm"), help="sampler")
    parser.add_argument("--guidance", type=float, default=4.5, help="guidance scale (4.5)")
    parser.add_argument("--flow-shift", type=float, help="flow shift of dpm/euler")
    parser.add_argument("--negative-prompt", default="", help="negative prompt for CFG")
    parser.add_argument("--height", type=int, help="image height in px (default: model native)")
    parser.add_argument("--width", type=int, help="image width in px (default: model native)")
    parser.add_argument(
        "--no-resolution-binning",
        dest="resolution_binning",
        action="store_false",
        help="sample at exactly --height x --width (multiples of 32)",
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), help="weights dtype")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("eval/report.json"),
        help="report file (default eval/report.json); the CSV and the images "
        "(REPORT-images/) go beside it",
    )
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("seeds", "steps", "fid_images", "height", "width"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SanakitError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.out.suffix.lower() != ".json":
        raise SanakitError(f"--out {args.out}: the report is a .json file, e.g. eval/report.json")
    for adapter in [*args.lora, *args.compare_lora]:
        if not adapter.exists():
            raise SanakitError(f"adapter {adapter}: no such file or folder")
    if args.compare_lora and args.compare is None:
        raise SanakitError("--compare-lora needs --compare (the folder it applies to)")
    if args.fid_model is not None and args.reference is None:
        raise SanakitError("--fid-model needs --reference (the images FID compares against)")
    if args.fid_images is not None and args.reference is None:
        raise SanakitError("--fid-images needs --reference")
    if args.reference is not None and args.fid_model is None and args.clip_model is None:
        raise SanakitError(
            "--reference needs features: --fid-model INCEPTION_FILE (standard FID) or "
            "--clip-model PATH (FD in CLIP space)"
        )


def run(args: argparse.Namespace) -> int:
    from sanakit.commands.generate import device_and_dtype, read_prompts
    from sanakit.config import check_output_folder
    from sanakit.metrics.evaluate import (
        ModelRun,
        Request,
        Scorers,
        check_metrics,
        generate,
        resolve,
        score_images,
        summarise,
        write_csv,
    )

    _check(args)
    prompts = read_prompts(None, args.prompts)
    request = Request(
        prompts=tuple(prompts),
        seeds=tuple(args.seed + k for k in range(args.seeds)),
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        flow_shift=args.flow_shift,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        resolution_binning=args.resolution_binning,
    )
    runs = [ModelRun("model", args.model, args.lora, args.lora_scale)]
    if args.compare is not None:
        runs.append(ModelRun("compare", args.compare, args.compare_lora, args.lora_scale))
    plans = [resolve(r, request) for r in runs]  # config files only: every folder checked
    if args.demo_score:
        from sanakit.metrics.demo import prompt_labels

        for prompt in prompts:
            prompt_labels(prompt)
    check_output_folder(args.out.parent, "--out")
    device, dtype_name = device_and_dtype(args.device, args.dtype)

    scorers = Scorers(demo=args.demo_score)
    if args.clip_model is not None:
        from sanakit.metrics.clip import ClipModel

        scorers.clip = ClipModel.load(args.clip_model, device=device, what="--clip-model")
    if args.reference is not None:
        from sanakit.metrics.fid import clip_features, folder_features, inception_features

        scorers.features = (
            inception_features(args.fid_model)
            if args.fid_model is not None
            else clip_features(scorers.clip)
        )
        scorers.reference = folder_features(args.reference, scorers.features, args.fid_images)
    check_metrics(scorers)

    from tqdm import tqdm

    images_root = args.out.with_name(f"{args.out.stem}-images")
    total = sum(p.steps for p in plans) * len(prompts) * args.seeds
    paths, scores = {}, {}
    with tqdm(total=total, desc="eval", unit="step") as bar:
        for r in runs:
            paths[r.label] = generate(
                r,
                request,
                images_root / r.label,
                device=device,
                dtype_name=dtype_name,
                progress=bar.update,
            )
    per_image_prompts = [p for p in prompts for _ in request.seeds]
    with tqdm(total=len(runs) * len(per_image_prompts), desc="score", unit="image") as bar:
        for r in runs:
            scores[r.label] = score_images(
                paths[r.label], per_image_prompts, scorers, progress=bar.update
            )
    report = summarise(scores, [r.label for r in runs])
    for r, plan in zip(runs, plans):  # each model's own sampler (a Sprint student: scm, 2 steps)
        report["models"][r.label] |= {
            "model": str(r.model),
            "lora": [str(a) for a in r.loras],
            "images": len(paths[r.label]),
            "sampler": plan.sampler,
            "steps": plan.steps,
            "guidance": plan.guidance_scale,
            "flow_shift": plan.flow_shift,
        }
    report["settings"] = {
        "prompts": str(args.prompts),
        "seeds": list(request.seeds),
        "size": list(plans[0].size),
        "clip_model": str(args.clip_model) if args.clip_model else None,
        "reference": str(args.reference) if args.reference else None,
        "fid_features": scorers.features.name if scorers.features else None,
        "reference_images": len(scorers.reference) if scorers.reference is not None else None,
    }
    csv_path = args.out.with_suffix(".csv")
    write_csv(csv_path, request, paths, scores)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for label, row in report["models"].items():
        shown = ", ".join(
            f"{k} {row[k]:.4g}" for k in ("clip_score", "demo_adherence", "fid", "kid") if k in row
        )
        print(f"{label}: {shown}")
    if "difference" in report:
        shown = ", ".join(
            f"{k} {v['mean']:+.4g} ± {v['se']:.2g}"
            for k, v in report["difference"].items()
            if isinstance(v, dict) and "mean" in v
        )
        print(f"model - compare: {shown}", file=sys.stdout)
    print(f"wrote {args.out} and {csv_path}")
    return 0
