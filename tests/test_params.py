"""Typed params: a section becomes a frozen dataclass; unknown keys and wrong types are errors."""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from converters.core.errors import ParamsError
from pipeline.params import from_mapping, load_section


@dataclasses.dataclass(frozen=True)
class Inner:
    scale: list[int] = dataclasses.field(default_factory=lambda: [1, 2])


@dataclasses.dataclass(frozen=True)
class Section:
    n: int = 3
    ratio: float = 0.5
    name: str = "x"
    flag: bool = False
    inner: Inner = Inner()
    maybe: int | None = None
    mode: Literal["a", "b"] = "a"


def test_defaults_and_values():
    s = from_mapping(Section, {"n": 4, "ratio": 1, "inner": {"scale": [3, 4]}, "maybe": None},
                     section="s")
    assert s == Section(n=4, ratio=1.0, inner=Inner([3, 4]))
    assert isinstance(s.ratio, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 5  # type: ignore[misc]


@pytest.mark.parametrize("data, message", [
    ({"m": 1}, "unknown key 's.m'"),                      # typo at the top
    ({"inner": {"scal": [1]}}, "unknown key 's.inner.scal'"),  # typo nested
    ({"n": "3"}, "'s.n' must be an integer"),             # a string is not an int
    ({"n": True}, "'s.n' must be an integer"),            # nor is a bool
    ({"flag": 1}, "'s.flag' must be true or false"),      # nor is an int a bool
    ({"inner": {"scale": 3}}, "'s.inner.scale' must be a list"),
    ({"mode": "c"}, "'s.mode' must be one of a, b, got 'c'"),  # not a choice
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[")):
        from_mapping(Section, data, section="s")


def test_missing_section_means_defaults(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("other: {a: 1}\n")
    assert load_section(Section, "s", p) == Section()


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_section(Section, "s", tmp_path / "nope.yaml")


def test_scientific_notation_is_a_number_as_dvc_reads_it(tmp_path):
    """PyYAML's YAML 1.1 reads 1e-4 as a string; DVC (ruamel, YAML 1.2) as a number: a
    learning rate written so must be the number DVC tracks, not a type error."""
    p = tmp_path / "params.yaml"
    p.write_text("s:\n  ratio: 1e-4\n  name: '1e5'\n  maybe: 2\n")
    assert load_section(Section, "s", p) == Section(ratio=1e-4, name="1e5", maybe=2)
    p.write_text("s:\n  ratio: 2.5E+3\n")
    assert load_section(Section, "s", p).ratio == 2500.0


@pytest.mark.parametrize("command, section, key, message", [
    ("evaluate", "evaluate", "score_thr", "moved to 'postprocess.score_thr'"),
    ("evaluate", "evaluate", "containment_max", "moved to 'postprocess.containment_max'"),
    ("propose", "propose", "nms_iou", "moved to 'postprocess.nms_iou'"),
    ("propose", "propose", "match_iou", "is no longer read (propose never used it)"),
])
def test_an_old_params_file_names_the_new_place_of_a_moved_key(tmp_path, capsys, command,
                                                               section, key, message):
    """params.yaml of an earlier spinepipe: one line naming the key's new place, exit 1,
    never a silent default."""
    from pipeline.cli import main
    params = tmp_path / "params.yaml"
    params.write_text(f"{section}:\n  {key}: 0.3\n")
    argv = {"evaluate": ["evaluate", "--model", "unet", "--fold", "0"],
            "propose": ["propose", "--output", str(tmp_path / "p.json")]}[command]
    assert main([*argv, "--params", str(params), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"key '{section}.{key}' {message}" in err, err
    assert str(params) in err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("key, value, message", [
    ("options", "{unet: {train_cfg.max_iters: 4}}", "moved to its models' blocks: "
                                                    "'models.<model>.options'"),
    ("model_img_scale", "{yolact: [192, 480]}", "moved to its models' blocks: "
                                                "'models.<model>.img_scale'"),
])
def test_a_preset_of_an_earlier_spinepipe_names_the_models_blocks(tmp_path, capsys, key, value,
                                                                  message):
    from pipeline.cli import main
    params = tmp_path / "params.yaml"
    params.write_text(f"train:\n  presets:\n    mine:\n      {key}: {value}\n")
    assert main(["train", "--model", "unet", "--fold", "0", "--params", str(params),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"key 'train.presets.mine.{key}' {message}" in err, err


def test_options_nested_or_dotted_are_the_same_options():
    """A preset's options as params.yaml nests them (and DVC's -S sets them) or as dotted
    --cfg-options keys: one nested dict, later layers over earlier ones key by key."""
    from train.fit.run_config import nested_options
    nested = {"model": {"decode_head": {"channels": 16, "in_channels": 16}},
              "param_scheduler": {1: {"end": 20}}}
    dotted = {"model.decode_head.channels": 16, "model.decode_head.in_channels": 16,
              "param_scheduler.1.end": 20}
    assert nested_options(nested) == nested_options(dotted) == {
        "model": {"decode_head": {"channels": 16, "in_channels": 16}},
        "param_scheduler": {"1": {"end": 20}}}          # a list item's index: a string key
    assert nested_options(nested, {"model.decode_head.channels": 32}) == {
        "model": {"decode_head": {"channels": 32, "in_channels": 16}},
        "param_scheduler": {"1": {"end": 20}}}
    swap = {"optim_wrapper": {"optimizer": {"_delete_": True, "type": "AdamW"}}}
    assert nested_options({"optim_wrapper.optimizer.lr": 0.1}, swap) == swap   # replaced


def test_every_moved_key_names_a_key_that_exists():
    from pipeline.params import MOVED
    from train.evaluation.recognition import PostprocessConfig
    post = {f.name for f in dataclasses.fields(PostprocessConfig)}
    for old, says in MOVED.items():
        if "moved to 'postprocess." in says:
            assert says.split("'postprocess.")[1].split("'")[0] in post, old


def test_propose_refuses_a_params_file_that_sets_only_export_s_image_path(tmp_path, capsys):
    """propose reads its own via_image_path: a params file written when it read export's
    gets one line, not proposals whose images VIA cannot find."""
    from pipeline.cli import main
    params = tmp_path / "params.yaml"
    out = tmp_path / "p.json"
    argv = ["propose", "--output", str(out), "--images", str(tmp_path / "none"),
            "--params", str(params), "--quiet"]
    params.write_text("export:\n  via_image_path: /data/png\npropose:\n  enabled: true\n")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'propose.via_image_path' is not" in err, err
    assert not out.exists()
    params.write_text("export:\n  via_image_path: /data/png\n"
                      "propose:\n  enabled: true\n  via_image_path: /data/png\n")
    assert main(argv) == 1                        # on to the next check: no trained run here
    err = capsys.readouterr().err
    assert "via_image_path" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_a_float_that_is_not_finite_is_an_error(tmp_path, value):
    """YAML reads .nan and .inf as floats; no bound, size or threshold means either (a band
    of .inf pixels is an allocation error later, a .nan threshold lets everything through):
    one line naming the key."""
    p = tmp_path / "params.yaml"
    p.write_text(f"s:\n  ratio: {value}\n")
    with pytest.raises(ParamsError, match=r"key 's.ratio' must be a finite number"):
        load_section(Section, "s", p)
