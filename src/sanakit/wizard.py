"""``sanakit configure``: a step-by-step questionnaire that writes a commented ``sanakit.toml``.

Plain ``input()`` prompts with defaults in brackets, so it also works over a pipe (one answer per
line; an empty line takes the default). Every answer is checked where it can be (the model folder
is a diffusers Sana folder, dataset folders exist and hold images with usable captions, the
batch fits the dataset) and asked again with the reason when it is wrong. End of input before
the last question is a :class:`SanakitError`. The written file is reloaded and validated with
:func:`sanakit.train.config.load_run_config`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sanakit.adapters.spec import LokrSpec, LoraSpec
from sanakit.config import DatasetConfig
from sanakit.errors import SanakitError
from sanakit.tomlwriter import dumps
from sanakit.train.config import (
    DEFAULT_LR,
    RunConfig,
    absolute_paths,
    load_run_config,
    run_config_from_dict,
)

LR_ADVICE = {
    "full": "Sana's loss is high and it wants a low rate: about 1e-5 for a full fine-tune",
    "lora": "adapters train a small fraction of the weights: about 1e-4",
    "lokr": "LoKr: 1e-4 with AdamW (2e-5 with Lion), per SimpleTuner's Sana quickstart",
}


class Retry(Exception):
    """Raised by a check: the answer is wrong; the message says why."""


class Prompter:
    """Asks questions through ``read`` (``input``) and ``write`` (``print``)."""

    def __init__(
        self,
        read: Callable[[str], str] = input,
        write: Callable[[str], None] = print,
    ) -> None:
        self.read, self.write = read, write

    def ask(self, question: str, default: Any = None, check: Callable[[str], Any] | None = None):
        """The checked answer to ``question``; an empty answer takes ``default``."""
        prompt = f"{question} [{default}]: " if default not in (None, "") else f"{question}: "
        while True:
            try:
                answer = self.read(prompt).strip()
            except EOFError:
                raise SanakitError(
                    f"configure: input ended before the question {question!r} was answered"
                ) from None
            if not answer:
                if default is None:
                    self.write("  an answer is needed")
                    continue
                answer = str(default)
            try:
                return check(answer) if check else answer
            except Retry as err:
                self.write(f"  {err}; try again")

    def choice(self, question: str, options: tuple[str, ...], default: str) -> str:
        def check(answer: str) -> str:
            if answer.lower() not in options:
                raise Retry(f"answer one of {', '.join(options)}")
            return answer.lower()

        return self.ask(f"{question} ({'/'.join(options)})", default, check)

    def yes(self, question: str, default: bool) -> bool:
        def check(answer: str) -> bool:
            if answer.lower() not in ("y", "yes", "n", "no"):
                raise Retry("answer y or n")
            return answer.lower().startswith("y")

        return self.ask(f"{question} (y/n)", "y" if default else "n", check)

    def number(
        self,
        question: str,
        default: float,
        kind: type = int,
        low: float = 1,
        below: float | None = None,
    ) -> Any:
        """A finite ``kind`` (int or float) ``>= low`` (and ``< below`` when given)."""

        def check(answer: str) -> Any:
            try:
                number = float(answer)
            except ValueError:
                raise Retry(f"{answer!r} is not a number") from None
            if not math.isfinite(number):
                raise Retry(f"{answer!r} is not a finite number")
            value = kind(number) if kind is int else kind(answer)
            if kind is int and number != value:
                raise Retry(f"{answer!r} is not a whole number")
            if value < low:
                raise Retry(f"it must be at least {low}")
            if below is not None and value >= below:
                raise Retry(f"it must be below {below}")
            return value

        return self.ask(question, default, check)


def check_model_folder(answer: str) -> str:
    """A diffusers-format Sana folder: model_index.json and transformer/ (vae/, text_encoder/)."""
    folder = Path(answer).expanduser()
    if not folder.is_dir():
        raise Retry(
            f"{folder} is not a folder (download one first, e.g. `huggingface-cli download "
            f"Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers --local-dir models/sana`)"
        )
    missing = [p for p in ("model_index.json", "transformer") if not (folder / p).exists()]
    if missing:
        raise Retry(f"{folder} is not a diffusers Sana folder (no {', '.join(missing)})")
    return str(folder.resolve())


def ask_adapter(p: Prompter, method: str) -> dict[str, int]:
    """The ``[train.lora]`` / ``[train.lokr]`` table: LoRA rank, or LoKr factor and rank."""
    if method == "lora":
        p.write("  LoRA rank: 16 suits a style or subject; more = more capacity, a bigger file")
        return {"rank": p.number("LoRA rank", LoraSpec().rank, int, 1)}
    defaults = LokrSpec()

    def check_factor(answer: str) -> int:
        try:
            value = int(answer)
        except ValueError:
            raise Retry(f"{answer!r} is not a whole number") from None
        if value < 1 and value != -1:
            raise Retry("the factor must be >= 1, or -1 for automatic")
        return value

    p.write(
        "  LoKr factor: each weight delta is kron(W1, W2), W1's sides at most the factor and W2\n"
        "  the rest, so a larger factor trains a smaller W2 (-1 = W1 and W2 as square as possible)"
    )
    factor = p.ask("LoKr factor", defaults.factor, check_factor)
    p.write(
        f"  LoKr rank (LyCORIS linear_dim): W2 is factored at this rank where it is below half "
        f"W2's side;\n  {defaults.rank} (SimpleTuner's quickstart) keeps every W2 a full matrix"
    )
    rank = p.number("LoKr rank", defaults.rank, int, 1)
    return {"factor": factor, "rank": rank}


def count_images(folder: Path, strategy: str, prompt: str | None) -> tuple[int, int]:
    """(images found, images with a usable caption) with sanakit's own folder reader."""
    from sanakit.data.sources import discover

    cfg = DatasetConfig(
        id="probe", path=str(folder), caption_strategy=strategy, instance_prompt=prompt
    )
    try:
        items = discover(cfg)
    except SanakitError as err:
        raise Retry(str(err).split(": ", 1)[-1]) from None
    return len(items), sum(1 for item in items if item.problem is None)


def ask_dataset(p: Prompter, index: int, batch: int, resolution: int, used: set[str]) -> dict:
    """One ``[[data.datasets]]`` table: folder, caption strategy, repeats (checked)."""
    p.write(f"\nDataset {index + 1}")

    def check_folder(answer: str) -> Path:
        folder = Path(answer).expanduser()
        if not folder.is_dir():
            raise Retry(f"{folder} is not a folder")
        found, _ = count_images(folder, "filename", None)
        p.write(f"  {found} images found")
        return folder.resolve()

    folder = p.ask("  image folder (searched recursively)", None, check_folder)
    has_txt = any(folder.rglob("*.txt"))
    while True:
        strategy = p.choice(
            "  captions: textfile (image.txt beside each image), filename, or instance_prompt",
            ("textfile", "filename", "instance_prompt"),
            "textfile" if has_txt else "filename",
        )
        prompt = None
        if strategy == "instance_prompt":
            prompt = p.ask("  instance prompt (the caption of every image)")
        found, usable = count_images(folder, strategy, prompt)
        if usable:
            if usable < found:
                p.write(f"  {found - usable} of {found} images have no usable caption (skipped)")
            break
        p.write(f"  none of the {found} images has a usable caption with {strategy}; try again")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-._") or "dataset"
    base, n = name, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    need = max(0, -(-batch // usable) - 1)  # smallest r with usable * (1 + r) >= batch

    def check_repeats(answer: str) -> int:
        try:
            value = int(answer)
        except ValueError:
            raise Retry(f"{answer!r} is not a whole number") from None
        if value < 0:
            raise Retry("repeats must be >= 0")
        if usable * (1 + value) < batch:
            raise Retry(
                f"{usable} images x (1 + {value}) is less than the batch size {batch}; "
                f"use repeats >= {need}"
            )
        return value

    repeats = p.ask("  repeats (extra passes per epoch; 0 = each image once)", need, check_repeats)
    ds = {"id": name, "path": str(folder), "caption_strategy": strategy}
    if prompt:
        ds["instance_prompt"] = prompt
    ds.update(resolution=float(resolution), resolution_type="pixel_area", repeats=repeats)
    return ds


def run_wizard(p: Prompter, output: Path, force: bool = False) -> RunConfig:
    """Ask every question, write ``output`` (commented TOML) and return the validated config."""
    p.write("sanakit configure: answer each question; press Enter for the [default].\n")
    base = p.ask("Base model: a local diffusers Sana folder", None, check_model_folder)
    method = p.choice("Training method", ("full", "lora", "lokr"), "full")
    adapter = ask_adapter(p, method) if method != "full" else None
    out_dir = p.ask("Output folder (checkpoints, validation images)", f"output/sana-{method}")
    resolution = p.number("Training resolution (pixels, about WxH = R*R)", 1024, int, 32)
    batch = p.number("Batch size per step", 1, int, 1)
    p.write(f"  learning rate: {LR_ADVICE[method]}")
    lr = p.number("Learning rate", DEFAULT_LR[method], float, 1e-12)
    steps = p.number("Training steps", 1000, int, 1)
    ema = p.yes("Keep an EMA of the weights (smoother results)", True)
    checkpointing = p.yes("Gradient checkpointing (least memory, ~30% slower)", True)
    prompts: list[str] = []
    p.write("Validation prompts, one per line; an empty line ends the list.")
    while True:
        text = p.ask(f"  prompt {len(prompts) + 1}", "")
        if not text:
            break
        prompts.append(text)
    every = p.number("Validate every N steps (0 = only at the end)", min(500, steps), int, 0)
    datasets: list[dict] = []
    used: set[str] = set()
    while True:
        datasets.append(ask_dataset(p, len(datasets), batch, resolution, used))
        if not p.yes("Add another dataset", False):
            break
    p.write("Caption dropout: the share of samples trained on the empty prompt, which")
    p.write("  classifier-free guidance needs (0 = never; 0.1 is the usual choice)")
    dropout = p.number("Caption dropout", 0.1, float, 0.0, below=1.0)
    for ds in datasets:
        ds["caption_dropout"] = dropout
    cache = p.ask("Cache folder (latents and text embeddings)", "cache")
    train: dict[str, Any] = {"method": method, "lr": lr, "batch_size": batch, "max_steps": steps}
    train.update(gradient_checkpointing=checkpointing)
    if adapter is not None:
        train[method] = adapter
    if ema:
        train["ema"] = {"decay": 0.995}
    data = {"cache_dir": cache, "datasets": datasets}
    side = max(32, round(resolution / 32) * 32)  # sampled sizes are multiples of 32 (DC-AE)
    validation = {"every_steps": every, "resolutions": [f"{side}x{side}"]}
    if prompts:
        validation["prompts"] = prompts
    raw = {"model": {"base": base}, "data": data, "train": train, "validation": validation}
    raw["output"] = {"dir": out_dir}
    # the answers are relative to where `configure` runs; the TOML may be written elsewhere and
    # its relative paths would be read against its own folder, so it holds absolute ones
    raw = absolute_paths(raw, Path.cwd())
    config = run_config_from_dict(raw)
    if output.exists() and not force and not p.yes(f"{output} exists; overwrite it", False):
        raise SanakitError(f"configure: {output} exists; not overwritten")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dumps(raw, _COMMENTS, _header(base)), encoding="utf-8")
    if load_run_config(output) != config:
        raise SanakitError(f"configure: {output} does not reload to the answers given")
    p.write(f"\nwrote {output}; start training with: sanakit train {output}")
    return config


def _header(base: str) -> list[str]:
    return [
        f"sanakit training config written by `sanakit configure` for {base}.",
        "Every key is documented in docs/configuration.md; edit freely.",
        "",
    ]


_COMMENTS = {
    "model.base": ["diffusers-format Sana folder (transformer/, vae/, text_encoder/, tokenizer/)"],
    "data.cache_dir": ["latents + text embeddings, computed once before training"],
    "data.datasets": [
        "one table per image folder; repeats = extra passes per epoch; caption_dropout = share "
        "of samples trained on the empty prompt (for classifier-free guidance)"
    ],
    "train.method": ["full fine-tune, lora (peft) or lokr (LyCORIS)"],
    "train.lora": ["LoRA: W + (alpha / rank) B A; alpha defaults to the rank"],
    "train.lokr": [
        "LoKr: W + kron(W1, W2), W1's sides <= factor; W2 factored at rank where the rank is "
        "below half its side (10000: full matrices)"
    ],
    "train.lr": ["Sana: ~1e-5 full fine-tune; 1e-4 LoKr with AdamW (SimpleTuner quickstart)"],
    "train.gradient_checkpointing": ["recompute activations in the backward pass to save memory"],
    "train.ema": [
        "exponential moving average of the weights, validated next to them; decay 0.995 as "
        "SimpleTuner (sanakit's default 0.9999 suits long runs)"
    ],
    "validation.every_steps": ["validation images every N steps (0 = only at the end)"],
    "output.dir": ["checkpoints, validation images and the final weights"],
}
