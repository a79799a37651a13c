"""``sanakit sprint-teacher BASE --out DIR``: a Sana model -> a Sana-Sprint teacher."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sprint-teacher",
        help="turn a Sana model into a Sana-Sprint teacher (qk-norm + dense time)",
        description="Adds RMS qk-norm to self- and cross-attention (new norm weights at ones) and "
        "dense time (timestep_scale 0.001: the time embedder sees t in [0, 1]) to a Sana "
        "pipeline or transformer folder, then writes it to --out (other pipeline parts are "
        "hard-linked). The result loads in diffusers' SanaPipeline; fine-tune it with `sanakit "
        "train` (docs/sprint.md) before distilling it with `sanakit distill`.",
    )
    p.add_argument("base", help="a Sana pipeline folder or transformer folder")
    p.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.errors import SanakitError
    from sanakit.models import load_transformer, save_transformer
    from sanakit.models.io import resolve_transformer_dir
    from sanakit.sprint.convert import make_sprint_teacher
    from sanakit.train.export import link_tree

    base, out = Path(args.base), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SanakitError(f"--out {out}: exists and is not an empty folder; choose a new folder")
    source = resolve_transformer_dir(base)
    nested = source != base  # a pipeline (or pixel-shuffle export) folder holding transformer/
    index_path = base / "model_index.json"
    if nested and index_path.is_file():
        kind = json.loads(index_path.read_text()).get("_class_name")
        if kind not in ("SanaPipeline", "SanaSprintPipeline"):  # Sprint: refused below, precisely
            raise SanakitError(f"{base}: a {kind} folder; sprint-teacher converts a SanaPipeline")
    model = load_transformer(source)  # stored dtype (bf16 for the released models)
    teacher, changes = make_sprint_teacher(model)
    save_transformer(teacher, out / "transformer" if nested else out)
    if nested:  # the other parts keep their layout: linked folders, copied files
        for part in sorted(base.iterdir()):
            if part.name == "transformer":
                continue
            if part.is_dir():
                link_tree(part, out / part.name)
            else:
                shutil.copy2(part, out / part.name)
    kind = "pipeline" if index_path.is_file() else "folder" if nested else "transformer"
    print(f"wrote the Sana-Sprint teacher {out} ({kind})")
    for change in changes:
        print(f"  {change}")
    if not changes:
        print("  nothing changed: it already has qk-norm and dense time")
    print(
        "next: fine-tune it with `sanakit train` (all parameters, flow loss, caption dropout 0.1; "
        "docs/sprint.md), then `sanakit distill`"
    )
    return 0
