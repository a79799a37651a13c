"""Caption settings of one multidatabackend entry -> the sanakit dataset's caption keys:
``caption_strategy`` (filename, textfile, instanceprompt, parquet), ``instance_prompt``,
``only_instance_prompt`` and the ``parquet`` block (-> a ``manifest`` dataset).
"""

from __future__ import annotations

from pathlib import Path

from sanakit.compat.simpletuner.common import BackendEntry, as_bool, as_str, is_off
from sanakit.errors import SanakitError

_CAPTIONS = {
    "filename": "filename",
    "textfile": "textfile",
    "instanceprompt": "instance_prompt",
    "instance_prompt": "instance_prompt",
    "parquet": "manifest",
}


def captions(e: BackendEntry, folder: Path) -> None:
    """Set ``e.ds``'s caption keys from the entry (or config.json's / SimpleTuner's default
    ``filename``); ``caption_strategy: parquet`` turns ``e.ds`` into a manifest dataset."""
    raw = e.pick("caption_strategy", "filename")
    shown = e.entry.get("caption_strategy", f"{raw} (default)")
    strategy = _CAPTIONS.get(str(raw))
    if strategy is None:
        e.unsupported(
            "caption_strategy",
            raw,
            "use filename, textfile, instanceprompt or parquet",
        )
        strategy = "textfile"
    only = as_bool(e.file, "only_instance_prompt", e.entry.get("only_instance_prompt", False))
    if "only_instance_prompt" in e.entry:
        if only:
            strategy = "instance_prompt"
            e.mapped(
                "only_instance_prompt",
                True,
                "caption_strategy",
                "every caption is the instance_prompt",
            )
        else:
            e.ignored("only_instance_prompt", False, "off")
    notes = {
        "filename": "sanakit also turns '-' into spaces and drops a trailing number (_003); "
        "SimpleTuner only turns '_' into spaces",
        "textfile": "image.txt beside each image, one caption per line (both)",
        "instance_prompt": "",
        "manifest": "",
    }
    if strategy == "manifest":
        _parquet(e, folder)
    else:
        e.ds["caption_strategy"] = strategy
        e.mapped("caption_strategy", shown, "caption_strategy", notes[strategy])
        if "parquet" in e.entry:
            e.ignored("parquet", e.entry["parquet"], "only used by caption_strategy parquet")
    prompt = e.entry.get("instance_prompt")
    if strategy == "instance_prompt":
        if not prompt:
            raise SanakitError(
                f"{e.file}: {e.label} needs instance_prompt for caption_strategy {raw!r}"
            )
        e.ds["instance_prompt"] = as_str(e.file, "instance_prompt", prompt)
        e.mapped("instance_prompt", prompt, "instance_prompt")
    elif "instance_prompt" in e.entry:
        e.ignored(
            "instance_prompt",
            prompt,
            "unused without caption_strategy instanceprompt (or prepend_instance_prompt)",
        )


_NO_EXTENSION = (
    "ids without extension: sanakit reads the image file named id + an image extension "
    "(.jpg .jpeg .png .webp .bmp) beside the manifest (numeric ids too); a name that already "
    "exists is read as it is"
)


def _parquet(e: BackendEntry, folder: Path) -> None:
    """caption_strategy parquet -> a sanakit manifest whose image paths are relative to it."""
    spec = e.entry.get("parquet")
    if not isinstance(spec, dict) or "path" not in spec:
        raise SanakitError(f"{e.file}: {e.label}.parquet must be an object with a 'path'")
    rel = as_str(e.file, "parquet.path", spec["path"])
    found = e.paths.find(rel) or (
        (folder / rel, "relative to instance_data_dir") if (folder / rel).exists() else None
    )
    if found is None:
        raise SanakitError(
            f"{e.file}: {e.label}.parquet.path {rel!r} not found (tried "
            f"{e.paths.tried(rel)}, {folder / rel})"
        )
    manifest, how = found
    e.ds.update(type="manifest", path=str(manifest), caption_strategy="manifest")
    e.mapped("caption_strategy", "parquet", "type", "parquet -> manifest")
    e.mapped("parquet.path", rel, "path", how)
    if manifest.resolve().parent != folder.resolve():
        e.unsupported(
            "parquet.path",
            rel,
            "sanakit resolves image names "
            "relative to the manifest's folder; put the parquet file in "
            "instance_data_dir",
        )
    for key, value in spec.items():
        at = f"parquet.{key}"
        full = f"{e.label}.{at}"  # as named in conversion errors
        if key == "filename_column":
            e.ds["image_column"] = as_str(e.file, full, value)
            e.mapped(at, value, "image_column")
        elif key == "caption_column":
            e.ds["caption_column"] = as_str(e.file, full, value)
            e.mapped(at, value, "caption_column")
        elif key == "identifier_includes_extension":
            if as_bool(e.file, full, value):
                e.ignored(at, value, "file names include the extension, as sanakit expects")
            else:
                e.ignored(at, value, _NO_EXTENSION)
        elif key in ("width_column", "height_column"):
            e.ignored(at, value, "sanakit reads image sizes from the files")
        elif key == "fallback_caption_column" and is_off(value):
            e.ignored(at, value, "off")
        elif key == "fallback_caption_column":
            e.ds["fallback_caption_column"] = as_str(e.file, full, value)
            e.mapped(at, value, "fallback_caption_column", "used where caption_column is empty")
        elif key != "path":
            e.unsupported(at, value, "not a parquet setting sanakit reads")
    # SimpleTuner's defaults when the block leaves the columns out (its parquet caption reader)
    for key, target, default in (
        ("filename_column", "image_column", "id"),
        ("caption_column", "caption_column", "description"),
    ):
        if key not in spec:
            e.ds[target] = default
            e.mapped(f"parquet.{key}", "(not set)", target, f"SimpleTuner's default {default!r}")
    if "identifier_includes_extension" not in spec:
        e.ignored(
            "parquet.identifier_includes_extension",
            "(not set)",
            "SimpleTuner's default false; " + _NO_EXTENSION,
        )
