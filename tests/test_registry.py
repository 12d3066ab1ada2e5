"""The model registry (train/models.py): a model is one config file declaring its family and
name, read without running it; a broken file is a one-line error naming it, and stops only
its own model; a model's name never becomes a path unless it is a registry name."""
from __future__ import annotations

from pathlib import Path

import pytest

from converters.core.errors import InvalidConfigError
from train import models

GOOD = "spinepipe = dict(family='semantic', name='SegFormer-B0')\n_base_ = ['mmseg::x.py']\n"


def _folder(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
    return tmp_path


def test_the_shipped_configs_are_the_studys_five_models():
    reg = models.registry()
    assert {k: (m.family, m.name) for k, m in reg.items()} == {
        "deeplabv3": ("semantic", "DeepLabv3"), "mask_rcnn": ("instance", "Mask R-CNN"),
        "pspnet": ("semantic", "PSPNet"), "unet": ("semantic", "U-Net"),
        "yolact": ("instance", "YOLACT")}
    assert models.names() == list(reg) and models.help_list() == ", ".join(reg)
    assert models.display_name("mask_rcnn") == "Mask R-CNN"
    assert models.display_name("gone") == "gone"       # an old evaluation's model, as given


def test_a_config_file_is_a_model_and_templates_are_not(tmp_path):
    folder = _folder(tmp_path, segformer_b0=GOOD, _template=GOOD,
                     solo="spinepipe = {'family': 'instance', 'name': 'SOLO'}\n")
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "data.py").write_text("x = 1\n")
    reg = models.registry(folder)
    assert list(reg) == ["segformer_b0", "solo"]
    assert reg["segformer_b0"].family == "semantic" and reg["solo"].name == "SOLO"
    assert models.get("solo", folder).config == tmp_path / "solo.py"


@pytest.mark.parametrize("text, message", [
    ("_base_ = ['mmdet::x.py']\n", "no model declaration; declare it with spinepipe = dict("),
    (GOOD + GOOD, "more than one model declaration"),
    ("NAME = 'x'\nspinepipe = dict(family='instance', name=NAME)\n", "is not plain text"),
    ("spinepipe = dict(family='panoptic', name='X')\n", "is not plain text"),
    ("spinepipe = dict(family='instance', name='X', extra=1)\n", "is not plain text"),
    ("spinepipe = dict(family='instance', name='  ')\n", "is not plain text"),
    ("spinepipe = dict(family='instance', name='X'\n", "not valid Python (line 1"),
    ("spinepipe = 1\x00\n", "not valid Python"),
])
def test_a_broken_declaration_is_one_line_naming_the_file(tmp_path, text, message):
    folder = _folder(tmp_path, broken=text, fine=GOOD)
    with pytest.raises(InvalidConfigError) as err:
        models.get("broken", folder)
    assert message in err.value.message and err.value.file == str(tmp_path / "broken.py")
    assert "\n" not in err.value.message
    assert models.get("fine", folder).name == "SegFormer-B0"   # its neighbour still works
    with pytest.raises(InvalidConfigError):
        models.registry(folder)                               # the whole list says it


def test_an_edited_config_is_read_again(tmp_path):
    folder = _folder(tmp_path, m=GOOD)
    assert models.get("m", folder).name == "SegFormer-B0"
    (tmp_path / "m.py").write_text(GOOD.replace("SegFormer-B0", "SegFormer B0 (MiT)") + "# more\n")
    assert models.get("m", folder).name == "SegFormer B0 (MiT)"


@pytest.mark.parametrize("name", ["../unet", "unet/../x", "Unet", "", "u net", "/abs", "a" * 41])
def test_a_model_name_never_becomes_a_path_unless_it_is_a_registry_name(tmp_path, name):
    with pytest.raises(InvalidConfigError, match="unknown model"):
        models.get(name)
    with pytest.raises(InvalidConfigError, match="unknown model"):
        models.run_dir(name, 0)
    with pytest.raises(InvalidConfigError, match="unknown model"):
        models.eval_dir(name, 0)


def test_a_file_name_that_cannot_name_a_model_is_refused(tmp_path):
    folder = _folder(tmp_path, **{"Mask-RCNN": GOOD})
    assert models.names(folder) == []
    with pytest.raises(InvalidConfigError, match="lower-case letters, digits and _"):
        models.registry(folder)


def test_two_models_of_one_display_name_are_refused_for_a_report(tmp_path):
    """The report's columns are display names: a copy of a config that kept its name would
    hide one model behind the other."""
    folder = _folder(tmp_path, mask_rcnn=GOOD.replace("SegFormer-B0", "Mask R-CNN"),
                     mask_rcnn_r18=GOOD.replace("SegFormer-B0", "Mask R-CNN"), unet=GOOD)
    assert models.display_names(["mask_rcnn", "unet"], folder) == {
        "mask_rcnn": "Mask R-CNN", "unet": "SegFormer-B0"}
    with pytest.raises(InvalidConfigError, match="mask_rcnn and mask_rcnn_r18 are both named "
                                                 "'Mask R-CNN'") as err:
        models.display_names(["mask_rcnn", "unet", "mask_rcnn_r18"], folder)
    assert err.value.file == str(tmp_path / "mask_rcnn_r18.py")


def test_a_misnamed_config_file_is_named_in_the_error(tmp_path):
    folder = _folder(tmp_path, **{"segformer-b0": GOOD})
    with pytest.raises(InvalidConfigError, match="rename .*segformer-b0.py: a model's name is "
                                                 "lower-case"):
        models.get("segformer-b0", folder)


def test_a_declaration_that_is_no_dict_of_text_is_refused(tmp_path):
    folder = _folder(tmp_path, odd="spinepipe = {'family': 'instance', 'name': 'X', []: 1}\n")
    with pytest.raises(InvalidConfigError, match="is not plain text"):
        models.get("odd", folder)
