"""config.json's quantisation keys -> ``[model]``: ``base_model_precision`` -> ``model.quantize``,
``text_encoder_1_precision`` -> ``model.text_encoder_quantize``, ``quantize_via`` ->
``model.quantize_via`` (sanakit.quantize; docs/low-vram.md). A function of a
:class:`~sanakit.compat.simpletuner.common.KeyReader`; see :mod:`.trainer`.

SimpleTuner's precision names are ``<format>-<library>``. sanakit quantises with bitsandbytes
only: ``nf4-bnb`` is the same format; the int8 weight formats of optimum-quanto and torchao map to
bitsandbytes' int8 (also one int8 per weight with a per-output-row scale). Formats sanakit does not
have (int4/int2 quanto, fp8, int4 torchao) are rejected with the nearest one named.
"""

from __future__ import annotations

from sanakit.compat.simpletuner.common import ABSENT, KeyReader, as_str

_INT8 = (
    "weight-only int8 like SimpleTuner's {lib} int8 (sanakit stores it with bitsandbytes: one "
    "int8 per weight, one scale per output row)"
)
# SimpleTuner precision -> sanakit quantisation, note
PRECISIONS: dict[str, tuple[str, str]] = {
    "no_change": ("none", "SimpleTuner's default: the weights keep their dtype"),
    "nf4-bnb": ("nf4", "bitsandbytes NF4, as SimpleTuner"),
    "int8-quanto": ("int8", _INT8.format(lib="optimum-quanto")),
    "int8-torchao": ("int8", _INT8.format(lib="torchao")),
}
# formats sanakit lacks -> the nearest SimpleTuner name it has
NEAREST: dict[str, str] = {
    "int4-quanto": "nf4-bnb",
    "int2-quanto": "nf4-bnb",
    "int4-torchao": "nf4-bnb",
    "fp8-quanto": "int8-quanto",
    "fp8uz-quanto": "int8-quanto",
    "fp8-torchao": "int8-torchao",
    "fp8-torchao-compile": "int8-torchao",
}
# quantize_via: SimpleTuner's "accelerator" quantises on the training device
VIA = {"cpu": "cpu", "accelerator": "device"}


def _precision(k: KeyReader, key: str, target: str) -> str:
    """Map one precision key to ``target``; returns the sanakit value ("none" when absent or
    rejected)."""
    value = k.take(key)
    if value is ABSENT:
        return "none"
    name = as_str(k.file, key, value)
    if name in PRECISIONS:
        ours, note = PRECISIONS[name]
        if ours == "none":
            k.ctx.ignored(key, value, note)
        else:
            k.put(key, target, ours, note)
        return ours
    nearest = NEAREST.get(name)
    known = ", ".join(PRECISIONS)
    detail = (
        f"sanakit has no {name.split('-')[0]} quantisation; the nearest it has is {nearest!r} "
        f"(-> {target} = {PRECISIONS[nearest][0]!r})"
        if nearest
        else f"sanakit maps {known}"
    )
    k.ctx.unsupported(k.file, key, value, detail)
    return "none"


def precision(k: KeyReader) -> None:
    """base_model_precision, text_encoder_1_precision, quantize_via (after the method is
    known: a quantised base needs an adapter)."""
    method = k.tables["train"].get("method", "full")
    base = k.raw.get("base_model_precision", ABSENT)
    if method == "full" and base is not ABSENT and base != "no_change":
        k.take("base_model_precision")
        k.ctx.unsupported(
            k.file,
            "base_model_precision",
            base,
            "a quantised base trains adapters only (model_type 'lora'); a full fine-tune "
            "updates the base weights",
        )
        base_kind = "none"
    else:
        base_kind = _precision(k, "base_model_precision", "model.quantize")
    text_kind = _precision(k, "text_encoder_1_precision", "model.text_encoder_quantize")
    via = k.take("quantize_via")
    if via is ABSENT:
        return
    if base_kind == text_kind == "none":
        k.ctx.ignored("quantize_via", via, "nothing is quantised")
    elif via in VIA:
        k.put("quantize_via", "model.quantize_via", VIA[via])
    else:
        k.ctx.unsupported(k.file, "quantize_via", via, f"sanakit maps {', '.join(VIA)}")
