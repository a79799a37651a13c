"""SimpleTuner config import: the seed's files map field by field; bad keys give one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.compat import seed_blocks
from tests.compat.conftest import HUB_ID, MINIMAL, write_tree

from sanakit.cli import main
from sanakit.compat import import_config, is_simpletuner_config
from sanakit.config import DatasetConfig
from sanakit.errors import SanakitError
from sanakit.flow import auto_shift
from sanakit.train.config import EmaSection, load_run_config
from sanakit.train.objective import batch_shift


def test_quickstart_seed_imports_field_by_field(root, hub_cache) -> None:
    source = write_tree(root, seed_blocks.QUICKSTART_CONFIG)
    result = import_config("config/config.json")
    c = result.config
    assert result.warnings == []
    assert c.model.base == str(hub_cache)  # the Hub id, found in the local HF cache
    t = c.train
    assert (t.method, t.batch_size, t.gradient_accumulation) == ("full", 6, 1)
    assert (t.optimizer, t.betas, t.eps, t.weight_decay) == ("optimi-adamw", (0.9, 0.99), 1e-6, 0)
    assert (t.mixed_precision, t.gradient_checkpointing, t.gradient_checkpointing_interval) == (
        "bf16",
        True,
        2,
    )
    assert t.auto_shift is True and t.flow_shift is None
    assert (t.max_steps, t.epochs, t.seed) == (10000, None, 42)
    assert t.ema == EmaSection(decay=0.995, update_every=1, on_cpu=False)
    assert t.lr is None and t.lora is None and t.lokr is None
    v = c.validation
    assert v.resolutions == ("1024x1024", "1280x768", "2048x2048")
    assert (v.guidance, v.steps, v.prompts) == (4.5, 50, ())
    assert v.prompt_library == str(root / "config" / "user_prompt_library.json")
    assert v.prompt_items() == list(json.loads(seed_blocks.PROMPT_LIBRARY).items())
    assert (c.output.dir, c.output.log_with) == (str(root / "output" / "models"), "wandb")
    assert c.data.cache_dir == str(root / "cache" / "sanakit")  # common parent of vae/ and text/
    assert c.data.seed == 42
    camera = DatasetConfig(
        id="pseudo-camera-10k-sana",
        path=str(root / "datasets" / "pseudo-camera-10k"),
        type="folder",
        caption_strategy="filename",
        resolution=512.0,
        resolution_type="pixel_area",
        crop=True,
        crop_style="center",
        crop_aspect="square",
        minimum_image_size=512.0,
        maximum_image_size=512.0,
        target_downsample_size=512.0,
        repeats=0,
        is_regularisation_data=True,
        disabled=False,
        caption_dropout=0.1,  # SimpleTuner's default (the quickstart config leaves it out)
    )
    subject = DatasetConfig(
        id="dreambooth-subject",
        path=str(root / "datasets" / "dreambooth-subject"),
        caption_strategy="instance_prompt",
        instance_prompt="the name of your subject goes here",
        resolution=1024.0,
        resolution_type="pixel_area",
        crop=False,  # crop false: maximum/target_downsample_size only act on crops
        minimum_image_size=1024.0,
        repeats=1000,
        caption_dropout=0.1,
    )
    subject_512 = DatasetConfig(
        id="dreambooth-subject-512",
        path=subject.path,
        caption_strategy="instance_prompt",
        instance_prompt="the name of your subject goes here",
        resolution=512.0,
        resolution_type="pixel_area",
        crop=False,
        minimum_image_size=512.0,
        repeats=1000,
        caption_dropout=0.1,
    )
    assert c.data.datasets == (camera, subject, subject_512)
    # no key silently ignored: every key of every file has a mapping entry
    keys = {entry.key for entry in result.mapping}
    for key in json.loads(source.read_text()):
        assert key.removeprefix("--") in keys
    for i, entry in enumerate(json.loads(seed_blocks.MULTIDATABACKEND)):
        for key in entry:
            assert f"multidatabackend.json[{i}].{key}" in keys
    by_key = {e.key: e for e in result.mapping}
    assert by_key["multidatabackend.json[0].metadata_backend"].target is None
    assert "ignored" in by_key["multidatabackend.json[0].metadata_backend"].note
    assert by_key["multidatabackend.json[3].cache_dir"].target == "data.cache_dir"
    assert "really shifts" in by_key["flow_schedule_auto_shift"].note


def test_prompt_library_format_example(root) -> None:
    write_tree(
        root,
        {**MINIMAL, "user_prompt_library": "config/user_prompt_library.json"},
        library=seed_blocks.PROMPT_LIBRARY_FORMAT,
    )
    items = import_config("config/config.json").config.validation.prompt_items()
    assert items == [
        ("nickname", "the prompt goes here"),
        ("another_nickname", "another prompt goes here"),
    ]


def _copied_example() -> dict:
    """config.json.example (strings for numbers and booleans) edited as the quickstart says."""
    raw = json.loads(seed_blocks.CONFIG_JSON_EXAMPLE)
    raw.update(
        {
            "--model_type": "full",
            "--model_family": "sana",
            "--train_batch_size": 6,
            "--pretrained_model_name_or_path": HUB_ID,
            "--use_ema": "true",
            "--optimizer": "optimi-adamw",
            "--validation_num_inference_steps": "50",
        }
    )
    return raw


def test_copied_config_json_example_reports_unsupported_then_imports(root) -> None:
    write_tree(root, _copied_example())
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    first, *items = str(err.value).splitlines()
    assert "2 SimpleTuner settings are not supported" in first and "--allow-unsupported" in first
    assert items == [
        "  1. push_checkpoints_to_hub = 'true' is not supported: sanakit does not upload "
        "checkpoints",
        "  2. push_to_hub = 'true' is not supported: sanakit does not upload; run "
        "`huggingface-cli upload` on output.dir",
    ]  # validation_guidance_rescale = "0.0" is off, not one of them
    result = import_config("config/config.json", allow_unsupported=True)
    assert len(result.warnings) == 2
    dropped = " ".join(result.warnings)
    for key in ("push_to_hub", "push_checkpoints_to_hub"):
        assert key in dropped
    t, v = result.config.train, result.config.validation
    assert t.lr == 1e-4 and t.warmup_steps == 100 and t.lr_scheduler == "polynomial"
    assert (t.lr_end, t.lr_power) == (4e-7, 0.8)  # SimpleTuner's defaults
    assert t.gradient_checkpointing is True and t.batch_size == 6 and t.seed == 42
    assert (v.steps, v.seed, v.every_steps, v.guidance) == (50, 42, 500, 3.0)
    assert v.prompts == ("A photo-realistic image of a cat",)
    assert all(ds.caption_dropout == 0.1 for ds in result.config.data.datasets)
    assert (result.config.output.checkpoint_every, result.config.output.keep_last) == (500, 5)
    assert result.resume == "latest" and result.resume_for(root / "output") is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"learning_rat": 1e-5},
            "unknown SimpleTuner key 'learning_rat'; did you mean 'learning_rate'?",
        ),
        ({"lr_scheduler": "sine"}, "lr_scheduler = 'sine' is not supported"),
        ({"model_family": "flux"}, "model_family = 'flux': sanakit trains Sana only"),
        (
            {"pretrained_model_name_or_path": "someone/other-model"},
            "huggingface-cli download someone/other-model",
        ),
        ({"optimizer": "prodigy"}, "optimizer = 'prodigy' is not supported: sanakit maps"),
        (
            {"data_backend_config": "config/missing.json"},
            "data_backend_config 'config/missing.json' not found",
        ),
        (
            {"user_prompt_library": "config/prompts.json"},
            "user_prompt_library 'config/prompts.json' not found (tried ",
        ),
        (
            {"model_type": "lora", "lora_type": "lycoris", "lycoris_config": "config/lyco.json"},
            "lycoris_config 'config/lyco.json' not found (tried ",
        ),
    ],
)
def test_errors_are_one_line(root, change, expected) -> None:
    write_tree(root, {**MINIMAL, **change})
    assert main(["import-simpletuner", "config/config.json", "-o", "out.toml"]) == 2
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(root / "config" / "config.json") in str(err.value) or "config.json" in str(err.value)


def test_backend_typo_and_allow_unsupported_warning(root) -> None:
    backends = json.loads(seed_blocks.MULTIDATABACKEND)
    backends[0]["crop_aspct"] = "square"
    write_tree(root, MINIMAL, backends=backends)
    with pytest.raises(SanakitError, match=r"crop_aspct; did you mean 'crop_aspect'\?"):
        import_config("config/config.json")
    backends[0].pop("crop_aspct")
    backends[0]["crop_style"] = "corner"
    write_tree(root, MINIMAL, backends=backends)
    with pytest.raises(SanakitError, match="crop_style = 'corner' is not supported"):
        import_config("config/config.json")
    result = import_config("config/config.json", allow_unsupported=True)
    assert len(result.warnings) == 1 and "crop_style = 'corner' dropped" in result.warnings[0]
    assert result.config.data.datasets[0].crop_style is None  # dropped: sanakit's default


def test_all_unsupported_keys_of_all_files_are_reported_together(root, capsys) -> None:
    backends = json.loads(seed_blocks.MULTIDATABACKEND)
    backends[0]["crop_style"] = "corner"
    backends[0].pop("is_regularisation_data", None)
    lycoris = {**json.loads(seed_blocks.SANA_LYCORIS_CONFIG), "multiplier": 0.5}
    lycoris["apply_preset"] = {"target_module": ["Attention"]}
    config = {**MINIMAL, "model_type": "lora", "lora_type": "lycoris"}
    config |= {"lycoris_config": "config/lycoris_config.json", "push_to_hub": True}
    write_tree(root, config, backends, lycoris=json.dumps(lycoris))
    for command in (["import-simpletuner", "config/config.json"], ["train", "config/config.json"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        first, *items = err.splitlines()
        assert first == (
            "sanakit: error: config/config.json: 3 SimpleTuner settings are not supported; "
            "remove them (or pass --allow-unsupported to drop them with a warning):"
        )
        assert len(items) == 3 and [item.split(". ")[0] for item in items] == ["  1", "  2", "  3"]
        for key in (
            "push_to_hub = True",
            "multidatabackend.json[0].crop_style = 'corner'",
            "lycoris_config.json:multiplier = 0.5",
        ):
            assert sum(key + " is not supported: " in item for item in items) == 1, key
    assert not (root / "sanakit.toml").exists()
    result = import_config("config/config.json", allow_unsupported=True)
    assert len(result.warnings) == 3
    assert result.config.data.datasets[0].crop_style is None  # dropped: sanakit's default


@pytest.mark.parametrize(
    ("keys", "flow_shift", "auto"),
    [
        ({}, None, False),
        ({"--flow_schedule_shift": 0.1}, 0.1, False),
        ({"flow_schedule_shift": "4.0"}, 4.0, False),
        ({"flow_schedule_auto_shift": "true"}, None, True),
        ({"flow_schedule_auto_shift": True, "flow_schedule_shift": 3}, None, True),
    ],
)
def test_flow_shift_options_change_the_timestep_shift(root, keys, flow_shift, auto) -> None:
    write_tree(root, {**MINIMAL, **keys})
    train = import_config("config/config.json").config.train
    assert (train.flow_shift, train.auto_shift) == (flow_shift, auto)
    latents = torch.zeros(1, 32, 32, 32)  # 1024 px -> 32 x 32 latent tokens
    expected = auto_shift(32 * 32) if auto else (flow_shift or 1.0)
    assert math.isclose(batch_shift(train, latents), expected)


def test_lowest_vram_lokr_config(root) -> None:
    write_tree(root, seed_blocks.LOWEST_VRAM_CONFIG)
    result = import_config("config/config.json")  # nothing unsupported (issue 15)
    m, t = result.config.model, result.config.train
    assert (m.quantize, m.quantize_via, m.text_encoder_quantize) == ("nf4", "cpu", "none")
    assert t.method == "lokr" and t.optimizer == "paged_lion8bit" and t.lr == 2e-5
    assert t.gradient_checkpointing
    assert (t.betas, t.weight_decay, t.batch_size) == ((0.9, 0.99), 0.0, 1)
    # SimpleTuner's Sana example: Attention (factor 2 via module_algo_map); FeedForward is no
    # Sana class; full_matrix -> full_matrix (linear_dim and linear_alpha then do nothing)
    assert t.lokr.target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert (t.lokr.factor, t.lokr.full_matrix, t.lokr.rank, t.lokr.alpha) == (2, True, 10000, None)
    notes = {e.key: e.note for e in result.mapping}
    assert notes["base_model_precision"] == "bitsandbytes NF4, as SimpleTuner"
    assert "wraps nothing" in notes["lycoris_config.json:apply_preset.target_module[FeedForward]"]
    assert all(ds.resolution == 1024 for ds in result.config.data.datasets[1:2])


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ({"target_module": ["GLUMBConv"]}, "conv_depth"),
        ({}, "without apply_preset"),
        ({"target_module": ["Atention"]}, "did you mean 'Attention'"),
        (
            {
                "target_module": ["Attention", "SanaTransformerBlock"],
                "enable_conv": False,
                "module_algo_map": {"Attention": {"factor": 4}},
            },
            "different LoKr factors",
        ),
    ],
)
def test_lycoris_presets_that_sanakit_cannot_express(root, preset, expected) -> None:
    lycoris = {"algo": "lokr", "factor": 8, "linear_dim": 4, "apply_preset": preset}
    config = {
        **MINIMAL,
        "model_type": "lora",
        "lora_type": "lycoris",
        "lycoris_config": "config/lycoris_config.json",
    }
    write_tree(root, config, lycoris=json.dumps(lycoris))
    with pytest.raises(SanakitError, match=expected):
        import_config("config/config.json")


def test_lycoris_glumbconv_dropped_conv_depth_and_linear_dim(root) -> None:
    lycoris = {
        "algo": "lokr",
        "factor": 8,
        "linear_dim": 4,
        "linear_alpha": 2,
        "apply_preset": {"target_module": ["SanaTransformerBlock"]},
    }
    config = {
        **MINIMAL,
        "model_type": "lora",
        "lora_type": "lycoris",
        "lycoris_config": "config/lycoris_config.json",
    }
    write_tree(root, config, lycoris=json.dumps(lycoris))
    result = import_config("config/config.json", allow_unsupported=True)
    lokr = result.config.train.lokr
    assert lokr.target_modules == (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "conv_inverted",
        "conv_point",
    )
    assert (lokr.factor, lokr.rank, lokr.alpha) == (8, 4, 2.0)
    assert "conv_depth" in result.warnings[0]


def test_standard_lora_uses_simpletuner_targets_and_defaults(root) -> None:
    config = {**MINIMAL, "model_type": "lora", "lora_rank": "32"}
    write_tree(root, config)  # the seed's regularisation set: SimpleTuner's parent-teacher target
    result = import_config("config/config.json")
    assert result.config.data.datasets[0].is_regularisation_data
    assert result.config.train.regularisation_target == "base_model"
    assert result.config.train.prior_loss_weight == 1.0  # SimpleTuner has no separate weight
    targets = {e.target for e in result.mapping if e.key.endswith("is_regularisation_data")}
    assert targets == {"data.datasets[0].is_regularisation_data", "train.regularisation_target"}
    assert 'regularisation_target = "base_model"' in result.toml()
    backends = json.loads(seed_blocks.MULTIDATABACKEND)
    backends[0].pop("is_regularisation_data")
    write_tree(root, config, backends)
    train = import_config("config/config.json").config.train
    assert train.regularisation_target == "data"
    lora = train.lora
    assert (lora.rank, lora.alpha, lora.dropout) == (32, None, 0.1)
    assert lora.target_modules == ("to_k", "to_q", "to_v", "to_out.0")
    backends[0]["is_regularisation_data"] = True
    backends[0]["disabled"] = True  # a disabled regularisation set changes nothing
    write_tree(root, config, backends)
    assert import_config("config/config.json").config.train.regularisation_target == "data"


def test_dataset_defaults_megapixels_and_parquet(root) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from sanakit.data.sources import discover

    folder = root / "datasets" / "pq"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / name)
    table = {"file": ["a.png", "b.png"], "text": ["a red box", "a red card"]}
    pq.write_table(pa.table(table), folder / "meta.parquet")
    backends = [
        {
            "id": "photos",
            "type": "local",
            "instance_data_dir": "datasets/pq",
            "crop": True,
            "caption_strategy": "parquet",
            "metadata_backend": "parquet",
            "minimum_image_size": 0.25,
            "parquet": {
                "path": "meta.parquet",
                "filename_column": "file",
                "caption_column": "text",
                "identifier_includes_extension": True,
                "width_column": "w",
            },
        },
        {"id": "text", "dataset_type": "text_embeds", "type": "local", "cache_dir": "tc"},
    ]
    write_tree(root, {**MINIMAL, "resolution": 512, "resolution_type": "pixel_area"}, backends)
    ds = import_config("config/config.json").config.data.datasets[0]
    assert (ds.type, ds.path, ds.caption_strategy) == (
        "manifest",
        str(folder / "meta.parquet"),
        "manifest",
    )
    assert (ds.image_column, ds.caption_column) == ("file", "text")
    assert ds.resolution == 512.0  # config.json's resolution is every dataset's default
    assert math.isclose(ds.minimum_image_size, 500.0)  # 0.25 MP -> sqrt(0.25e6) px edge
    assert (ds.crop_style, ds.crop_aspect) == ("random", "square")  # SimpleTuner's defaults
    assert [item.captions for item in discover(ds)] == [("a red box",), ("a red card",)]


def test_relative_paths_follow_simpletuner_root_from_any_directory(root, tmp_path, monkeypatch):
    write_tree(root, seed_blocks.QUICKSTART_CONFIG)
    here = import_config("config/config.json").config
    monkeypatch.chdir(tmp_path)  # elsewhere: config/... is relative to the config's parent
    there = import_config(root / "config" / "config.json").config
    assert there == here
    # a backend file next to config.json, named without config/, is found in the config's folder
    write_tree(root, {**MINIMAL, "data_backend_config": "multidatabackend.json"})
    result = import_config(root / "config" / "config.json")
    entry = next(e for e in result.mapping if e.key == "data_backend_config")
    assert entry.note == "read relative to the config's folder"


def test_toml_round_trip_and_import_command(root) -> None:
    write_tree(root, seed_blocks.QUICKSTART_CONFIG)
    result = import_config("config/config.json")
    (root / "direct.toml").write_text(result.toml())
    assert load_run_config(root / "direct.toml") == result.config
    assert main(["import-simpletuner", "config/config.json", "-o", "sanakit.toml"]) == 0
    text = (root / "sanakit.toml").read_text()
    assert load_run_config(root / "sanakit.toml") == result.config
    assert "# SimpleTuner flow_schedule_auto_shift = true" in text
    assert 'metadata_backend = "discovery": ignored' in text
    assert main(["import-simpletuner", "config/config.json", "-o", "sanakit.toml"]) == 2  # exists
    assert main(["import-simpletuner", "config/config.json", "-o", "sanakit.toml", "--force"]) == 0


def test_detects_simpletuner_configs(root) -> None:
    write_tree(root, seed_blocks.LOWEST_VRAM_CONFIG)
    assert is_simpletuner_config(root / "config" / "config.json")
    (root / "ours.json").write_text(json.dumps({"model": {"preset": "tiny"}, "train": {}}))
    assert not is_simpletuner_config(root / "ours.json")
    assert not is_simpletuner_config(root / "missing.json")


@pytest.mark.parametrize(
    ("key", "value", "outcome"),
    [
        ("validation_preview", True, "unsupported"),  # the Chinese seed's preview option
        ("validation_preview_steps", 5, "ignored"),
        ("vae_cache_disable", True, "ignored"),
        ("push_to_hub", "true", "unsupported"),
        ("report_to", "tensorboard", "output.log_with"),
        ("base_model_precision", "no_change", "ignored"),
        ("base_model_precision", "int8-quanto", "unsupported"),
        ("quantize_via", "cpu", "ignored"),
        ("gradient_accumulation_steps", "4", "train.gradient_accumulation"),
        ("vae_batch_size", 1, "ignored"),
        ("lora_type", "lycoris", "ignored"),  # model_type full: adapters unused
        ("num_train_epochs", 5, "unsupported"),  # together with max_train_steps
    ],
)
def test_seed_narrative_keys(root, key, value, outcome) -> None:
    write_tree(root, {**MINIMAL, key: value})
    if outcome == "unsupported":
        with pytest.raises(SanakitError, match=f"{key} = {value!r} is not supported"):
            import_config("config/config.json")
        result = import_config("config/config.json", allow_unsupported=True)
        assert result.warnings and key in result.warnings[0]
        return
    (entry,) = [e for e in import_config("config/config.json").mapping if e.key == key]
    assert (entry.target or "ignored") == outcome
    assert entry.note if outcome == "ignored" else True


def test_train_command_reports_import_errors_in_one_line(root, capsys) -> None:
    write_tree(root, {**MINIMAL, "--lr_scheduler": "sine"})
    assert main(["train", "config/config.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sanakit: error: ") and "\n" not in err
    assert "lr_scheduler = 'sine' is not supported" in err and "--allow-unsupported" in err
    from sanakit.cli import build_parser

    args = build_parser().parse_args(["train", "config/config.json", "--allow-unsupported"])
    assert args.allow_unsupported is True
