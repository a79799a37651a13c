"""Caption settings of one multidatabackend entry -> the sanakit dataset's caption keys:
``caption_strategy`` (filename, textfile, instanceprompt, parquet), ``instance_prompt``,
``only_instance_prompt`` and the ``parquet`` block (-> a ``manifest`` dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sanakit.compat.st_common import Context, PathResolver, as_bool, as_str, is_off
from sanakit.errors import SanakitError

_CAPTIONS = {
    "filename": "filename",
    "textfile": "textfile",
    "instanceprompt": "instance_prompt",
    "instance_prompt": "instance_prompt",
    "parquet": "manifest",
}


def captions(
    file: Path,
    label: str,
    where: str,
    entry: dict[str, Any],
    ctx: Context,
    paths: PathResolver,
    defaults: dict[str, Any],
    ds: dict[str, Any],
    folder: Path,
) -> None:
    """Set ``ds``'s caption keys from the entry (or config.json's / SimpleTuner's default
    ``filename``); ``caption_strategy: parquet`` turns ``ds`` into a manifest dataset."""
    raw = entry.get("caption_strategy", defaults.get("caption_strategy", "filename"))
    shown = entry.get("caption_strategy", f"{raw} (default)")
    strategy = _CAPTIONS.get(str(raw))
    if strategy is None:
        ctx.unsupported(
            file,
            f"{label}.caption_strategy",
            raw,
            "use filename, textfile, instanceprompt or parquet",
        )
        strategy = "textfile"
    only = as_bool(file, "only_instance_prompt", entry.get("only_instance_prompt", False))
    if "only_instance_prompt" in entry:
        if only:
            strategy = "instance_prompt"
            ctx.mapped(
                f"{label}.only_instance_prompt",
                True,
                f"{where}.caption_strategy",
                "every caption is the instance_prompt",
            )
        else:
            ctx.ignored(f"{label}.only_instance_prompt", False, "off")
    notes = {
        "filename": "sanakit also turns '-' into spaces and drops a trailing number (_003); "
        "SimpleTuner only turns '_' into spaces",
        "textfile": "image.txt beside each image, one caption per line (both)",
        "instance_prompt": "",
        "manifest": "",
    }
    if strategy == "manifest":
        _parquet(file, label, where, entry, ctx, paths, ds, folder)
    else:
        ds["caption_strategy"] = strategy
        ctx.mapped(f"{label}.caption_strategy", shown, f"{where}.caption_strategy", notes[strategy])
        if "parquet" in entry:
            ctx.ignored(
                f"{label}.parquet", entry["parquet"], "only used by caption_strategy parquet"
            )
    prompt = entry.get("instance_prompt")
    if strategy == "instance_prompt":
        if not prompt:
            raise SanakitError(
                f"{file}: {label} needs instance_prompt for caption_strategy {raw!r}"
            )
        ds["instance_prompt"] = as_str(file, "instance_prompt", prompt)
        ctx.mapped(f"{label}.instance_prompt", prompt, f"{where}.instance_prompt")
    elif "instance_prompt" in entry:
        ctx.ignored(
            f"{label}.instance_prompt",
            prompt,
            "unused without caption_strategy instanceprompt (or prepend_instance_prompt)",
        )


def _parquet(
    file: Path,
    label: str,
    where: str,
    entry: dict[str, Any],
    ctx: Context,
    paths: PathResolver,
    ds: dict[str, Any],
    folder: Path,
) -> None:
    """caption_strategy parquet -> a sanakit manifest whose image paths are relative to it."""
    spec = entry.get("parquet")
    if not isinstance(spec, dict) or "path" not in spec:
        raise SanakitError(f"{file}: {label}.parquet must be an object with a 'path'")
    rel = as_str(file, "parquet.path", spec["path"])
    found = paths.find(rel) or (
        (folder / rel, "relative to instance_data_dir") if (folder / rel).exists() else None
    )
    if found is None:
        raise SanakitError(
            f"{file}: {label}.parquet.path {rel!r} not found (tried "
            f"{paths.tried(rel)}, {folder / rel})"
        )
    manifest, how = found
    ds.update(type="manifest", path=str(manifest), caption_strategy="manifest")
    ctx.mapped(f"{label}.caption_strategy", "parquet", f"{where}.type", "parquet -> manifest")
    ctx.mapped(f"{label}.parquet.path", rel, f"{where}.path", how)
    if manifest.resolve().parent != folder.resolve():
        ctx.unsupported(
            file,
            f"{label}.parquet.path",
            rel,
            "sanakit resolves image names "
            "relative to the manifest's folder; put the parquet file in "
            "instance_data_dir",
        )
    for key, value in spec.items():
        at = f"{label}.parquet.{key}"
        if key == "filename_column":
            ds["image_column"] = as_str(file, at, value)
            ctx.mapped(at, value, f"{where}.image_column")
        elif key == "caption_column":
            ds["caption_column"] = as_str(file, at, value)
            ctx.mapped(at, value, f"{where}.caption_column")
        elif key == "identifier_includes_extension":
            if as_bool(file, at, value):
                ctx.ignored(at, value, "file names include the extension, as sanakit expects")
            else:
                ctx.unsupported(
                    file,
                    at,
                    value,
                    "sanakit needs file names with their extension in the filename column",
                )
        elif key in ("width_column", "height_column"):
            ctx.ignored(at, value, "sanakit reads image sizes from the files")
        elif key == "fallback_caption_column" and is_off(value):
            ctx.ignored(at, value, "off")
        elif key != "path":
            ctx.unsupported(file, at, value, "not a parquet setting sanakit reads")
    if "identifier_includes_extension" not in spec:
        ctx.unsupported(
            file,
            f"{label}.parquet.identifier_includes_extension",
            "(not set)",
            "SimpleTuner then appends .png; sanakit needs file names with their "
            "extension (set it to true)",
        )
