"""Per-run ("leaf") MMEngine configs: a model config from ``train/configs/`` plus this run's
data paths, image scale and schedule.

Model configs inherit MMDetection's / MMSegmentation's own base configs (``mmdet::``,
``mmseg::``) and override only what this data needs; a leaf config adds what differs per fold
and preset, and is written next to the run's outputs as an artifact (``config.py``), so the
exact configuration of every trained model can be re-run with MMDetection's or MMSegmentation's
own tools.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config

from converters.core.errors import MissingInputError
from train.fit.augment import CUSTOM_IMPORTS, augment_step
from train.models import BEST_METRIC, family

CONFIG_DIR = Path(__file__).parents[1] / "configs"

def config_path(model: str) -> Path:
    family(model)
    return CONFIG_DIR / f"{model}.py"


def _pipelines(cfg: Config):
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = cfg.get(loader, {}).get("dataset")
        if ds is not None and "pipeline" in ds:
            yield ds["pipeline"]


def set_transform(cfg: Config, transform: str, **kwargs: Any) -> None:
    """Set ``kwargs`` on every ``transform`` step of every data pipeline of ``cfg``."""
    for pipeline in _pipelines(cfg):
        for step in pipeline:
            if step.get("type") == transform:
                step.update(kwargs)


def _grid(size: int) -> list[int]:
    """Feature map sizes of YOLACT's five levels (strides 8..128, rounded up) for one side."""
    sizes, f = [], -(-size // 8)
    for _ in range(5):
        sizes.append(f)
        f = -(-f // 2)
    return sizes


def _yolact_input_size(cfg: Config, width: int, height: int) -> None:
    """YOLACT's fixed input (every image resized to it, aspect not kept, so prototypes cover
    the whole image with no padding) and the anchor strides / centres that follow from it.

    MMDetection's YOLACT uses a 550 x 550 square (COCO's mixed aspects). Lateral spine
    radiographs are all about 1:2.5 (width:height); squeezing them into a square halves each
    vertebra's height in the 1/4-scale prototypes, which then merge neighbours and miss the
    sacrum. The input keeps the modality's aspect instead: strides per axis.
    """
    set_transform(cfg, "Resize", scale=(width, height), keep_ratio=False)
    anchors = cfg.model.bbox_head.anchor_generator
    pairs = list(zip(_grid(width), _grid(height)))
    anchors["strides"] = [(width / fw, height / fh) for fw, fh in pairs]
    anchors["centers"] = [(width * 0.5 / fw, height * 0.5 / fh) for fw, fh in pairs]


def build_leaf(model: str, *, images: str | Path, train_ann: str | Path, val_ann: str | Path,
               work_dir: str | Path, masks: str | Path | None = None,
               img_scale: tuple[int, int] | None = None,
               crop_size: tuple[int, int] | None = None, seed: int = 0,
               pretrained: str | None = None, dvclive: bool = True,
               augment: list[dict[str, Any]] | None = None,
               options: Mapping[str, Any] | None = None) -> Config:
    """The leaf config of one run.

    ``images`` holds the PNGs; ``masks`` the class masks (semantic models); ``train_ann`` /
    ``val_ann`` are COCO files (instance models) or split lists of image stems (semantic models).
    ``img_scale`` is (width, height) (YOLACT: its fixed input size), ``crop_size`` (height, width);
    ``pretrained`` a local checkpoint to start from (``load_from``); ``augment`` albumentations
    transforms for the training pipeline (:mod:`train.fit.augment`); ``options`` MMEngine
    options, nested or dotted (:func:`nested_options`), applied last.
    """
    fam = family(model)
    cfg = Config.fromfile(str(config_path(model)))
    _set_data(cfg, model, fam, images, train_ann, val_ann, masks)
    if img_scale is not None:
        if model == "yolact":
            _yolact_input_size(cfg, int(img_scale[0]), int(img_scale[1]))
        else:
            set_transform(cfg, "Resize", scale=tuple(img_scale))
    if crop_size is not None and fam == "semantic":
        set_transform(cfg, "RandomCrop", crop_size=tuple(crop_size))
        cfg.model.data_preprocessor["size"] = tuple(crop_size)
    if augment:
        pipeline = cfg.train_dataloader.dataset.pipeline
        pack = next(i for i, t in enumerate(pipeline) if t["type"].startswith("Pack"))
        pipeline.insert(pack, augment_step(fam, augment))
        cfg.custom_imports = CUSTOM_IMPORTS
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.randomness = dict(seed=seed)
    cfg.load_from = pretrained or None
    checkpoint = cfg.default_hooks["checkpoint"]
    checkpoint.update(save_best=BEST_METRIC[fam], rule="greater", max_keep_ckpts=1)
    if dvclive:
        backends = list(cfg.visualizer.get("vis_backends", []))
        # metrics and curves only: no DVC experiment commit (it would move git's HEAD under
        # a running pipeline) and no nested dvc.yaml (plots are declared in the root one)
        backends.append(dict(type="DVCLiveVisBackend",
                             save_dir=str(Path(work_dir).resolve() / "dvclive"),
                             artifact_suffix=(),
                             init_kwargs=dict(save_dvc_exp=False, dvcyaml=False)))
        cfg.visualizer["vis_backends"] = backends
    if options:
        cfg.merge_from_dict(nested_options(options), allow_list_keys=True)
    return cfg


def nested_options(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """MMEngine options as one nested dict: each layer's dotted keys (``--cfg-options``
    ``model.decode_head.channels``) and nested mappings (params.yaml) expanded alike, keys made
    strings (a list item is addressed by its index: ``param_scheduler: {1: {end: 20}}``), later
    layers over earlier ones key by key. A mapping with ``_delete_: true`` replaces what is
    there (MMEngine's rule), here as in the config."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            node, parts = out, str(key).split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            _merge(node, parts[-1], _stringify(value))
    return out


def _stringify(value: Any) -> Any:
    return {str(k): _stringify(v) for k, v in value.items()} if isinstance(value, Mapping) \
        else value


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    old = node.get(key)
    if isinstance(old, dict) and isinstance(value, dict) and not value.get("_delete_"):
        for k, v in value.items():
            _merge(old, k, v)
    else:
        node[key] = value


def _set_data(cfg: Config, model: str, fam: str, images: str | Path, train_ann: str | Path,
              val_ann: str | Path, masks: str | Path | None) -> None:
    """Point the train / val / test dataloaders (and an instance model's evaluators) at this
    run's images, annotations and masks, by absolute paths."""
    images = str(Path(images).resolve()) + "/"
    for name, ann in (("train_dataloader", train_ann), ("val_dataloader", val_ann),
                      ("test_dataloader", val_ann)):
        ds = cfg[name]["dataset"]
        ds["data_root"] = ""
        ds["ann_file"] = str(Path(ann).resolve())
        if fam == "instance":
            ds["data_prefix"] = dict(img=images)
        else:
            if masks is None:
                raise MissingInputError(f"{model} needs the class masks folder",
                                        produced_by="convert")
            ds["data_prefix"] = dict(img_path=images, seg_map_path=str(Path(masks).resolve()))
    if fam == "instance":
        cfg.val_evaluator["ann_file"] = str(Path(val_ann).resolve())
        cfg.test_evaluator["ann_file"] = str(Path(val_ann).resolve())


def replace_type(node: Any, old: str, new: str) -> None:
    """Every ``type=old`` in a config (nested dicts and lists) becomes ``type=new``."""
    if isinstance(node, dict):
        if node.get("type") == old:
            node["type"] = new
        for value in node.values():
            replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            replace_type(value, old, new)
