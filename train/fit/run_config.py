"""Per-run ("leaf") MMEngine configs: a model config from ``train/configs/`` plus this run's
data paths, image scale and schedule.

Model configs inherit MMDetection's / MMSegmentation's own base configs (``mmdet::``,
``mmseg::``) and override only what this data needs; a leaf config adds what differs per fold
and preset, and is written next to the run's outputs as an artifact (``config.py``), so the
exact configuration of every trained model can be re-run with MMDetection's or MMSegmentation's
own tools.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config

from converters.core.errors import InvalidConfigError, MissingInputError
from train.fit.adapt import adapt, pipelines
from train.fit.augment import CUSTOM_IMPORTS, augment_step
from train.fit.image_cache import MODULE as image_cache_module, STEP as cached_step
from train.models import BEST_METRIC, family_of_scope, get



def config_path(model: str) -> Path:
    return get(model).config


def load_model_config(model: str) -> Config:
    """A model's config as MMEngine reads it; an error in it (a syntax error, a missing base,
    a key set by two of its bases, a line that fails, no model, a family its base does not
    have) is one line naming the file and what to change."""
    entry = get(model)
    path, where = entry.config, f"train/configs/{entry.config.name}"
    _check_bases(path, where)
    try:
        cfg = Config.fromfile(str(path))
    except KeyError as exc:
        text = str(exc.args[0] if exc.args else exc)
        if "Duplicate key" in text:
            keys = sorted(text.split(":", 1)[-1].strip().strip("{}").replace("'", "").split(", "))
            keys = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            raise InvalidConfigError(
                f"two of its _base_ files set {keys}; inherit one MMDetection / MMSegmentation "
                "config and set those keys in the file itself (spinepipe supplies the data "
                "block: train/configs/_template.py)", file=where) from None
        raise InvalidConfigError(f"does not load ({type(exc).__name__}: {text[:160]})",
                                 file=where) from None
    except Exception as exc:   # the file is the user's code: whatever its lines raise
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InvalidConfigError(f"does not load ({type(exc).__name__}: {first})",
                                 file=where) from None
    if not isinstance(cfg.get("model"), dict):
        raise InvalidConfigError("no model = dict(...): inherit an MMDetection / "
                                 "MMSegmentation config (train/configs/_template.py)", file=where)
    scope = cfg.get("default_scope")
    if scope in ("mmdet", "mmseg") and family_of_scope(scope) != entry.family:
        raise InvalidConfigError(
            f"declared family='{entry.family}', but its base is an "
            f"{'MMDetection' if scope == 'mmdet' else 'MMSegmentation'} config "
            f"(family='{family_of_scope(scope)}')", file=where)
    return cfg


def _check_bases(path: Path, where: str) -> None:
    """A model's ``_base_`` names package configs (``mmdet::``, ``mmseg::``) or files of
    ``./_base_/``, never another model's file: its train stage depends on its own file and
    ``_base_/`` only, so a change to the other model's file would not re-train it."""
    try:
        tree = ast.parse(path.read_bytes())
        found = [n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "_base_" for t in n.targets)]
        bases = ast.literal_eval(found[0]) if found else []
    except (SyntaxError, ValueError, TypeError):
        return        # MMEngine says what is wrong when it loads the file
    for base in [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []:
        if isinstance(base, str) and "::" not in base \
                and not base.replace("\\", "/").startswith(("./_base_/", "_base_/")):
            raise InvalidConfigError(
                f"_base_ names {base}: inherit a package config (mmdet::..., mmseg::...) or a "
                "file of train/configs/_base_/, not another model's file (its changes would not "
                "re-train this model); copy what you need into this file", file=where)


#: a leaf config's loops, as MMEngine's Runner builds them
LOOP_KEYS = {"train_cfg": "train", "val_cfg": "validation", "test_cfg": "test"}


def check_loops(cfg: Config, model: str) -> None:
    """Each loop's options are ones its loop class takes (``max_iters`` is not an option of an
    epoch-based loop, nor ``max_epochs`` of an iteration-based one), checked before anything
    trains: MMEngine builds the loops only when training starts, and then raises a traceback."""
    import inspect

    from mmengine.registry import LOOPS, DefaultScope

    where = f"train/configs/{config_path(model).name}"
    for key, what in LOOP_KEYS.items():
        loop = cfg.get(key)
        if not isinstance(loop, dict):
            continue
        if "type" in loop and "by_epoch" in loop:
            raise InvalidConfigError(f"{key} sets both type ({loop['type']}) and by_epoch; "
                                     "keep one (MMEngine takes either)", file=where)
        kind = loop.get("type")
        if kind is None:         # MMEngine's other spelling: by_epoch picks the loop
            if key != "train_cfg":
                continue
            kind = "EpochBasedTrainLoop" if loop.get("by_epoch", True) else "IterBasedTrainLoop"
        with DefaultScope.overwrite_default_scope(cfg.get("default_scope")):
            cls = LOOPS.get(kind) if isinstance(kind, str) else kind
        if cls is None:
            raise InvalidConfigError(f"{key}: unknown loop type {kind!r}", file=where)
        for name in ("max_epochs", "max_iters", "val_interval", "val_begin"):
            value = loop.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (1 if name != "val_begin" else 0)):
                raise InvalidConfigError(f"{key}.{name} is {value!r}: a whole number of "
                                         f"{'epochs' if 'epoch' in cls.__name__.lower() else 'iterations'}"
                                         f", at least {1 if name != 'val_begin' else 0}",
                                         file=where)
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        takes = [n for n in params if n not in ("self", "runner", "dataloader", "evaluator")]
        wrong = sorted(k for k in loop if not k.startswith("_") and k not in ("type", "by_epoch")
                       and k not in takes)
        if wrong:
            raise InvalidConfigError(
                f"{key}: its {what} loop {cls.__name__} takes {', '.join(takes)}, not "
                f"{', '.join(wrong)}; change the preset's options for {model} "
                f"(train.presets.<preset>.models.{model}.options) or --cfg-options", file=where)


def by_iterations(loop: Mapping[str, Any]) -> bool:
    """Whether a ``train_cfg`` runs MMEngine's iteration-based loop: its ``type`` (plain, scoped
    ``mmengine.IterBasedTrainLoop``, or the class), else ``by_epoch`` (MMEngine's default: by
    epoch)."""
    kind = loop.get("type")
    if kind is None:
        return not loop.get("by_epoch", True)
    name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
    return name == "IterBasedTrainLoop"


def set_transform(cfg: Config, transform: str, **kwargs: Any) -> None:
    """Set ``kwargs`` on every ``transform`` step of every data pipeline of ``cfg``."""
    for pipeline in pipelines(cfg):
        for step in pipeline:
            if step_type(step) == transform:
                step.update(kwargs)


def step_type(step: Mapping[str, Any]) -> str:
    """A pipeline step's transform name as registries know it bare: ``Resize`` for
    ``"Resize"``, ``"mmdet.Resize"`` (a scoped name) and the class itself (new-style configs)."""
    kind = step.get("type")
    return str(getattr(kind, "__name__", kind)).rsplit(".", 1)[-1]


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
               image_cache: str | Path | None = None,
               options: Mapping[str, Any] | None = None) -> Config:
    """The leaf config of one run.

    ``images`` holds the PNGs; ``masks`` the class masks (semantic models); ``train_ann`` /
    ``val_ann`` are COCO files (instance models) or split lists of image stems (semantic models).
    ``img_scale`` is (width, height) (YOLACT: its fixed input size), ``crop_size`` (height, width);
    ``pretrained`` a local checkpoint to start from (``load_from``); ``augment`` albumentations
    transforms for the training pipeline (:mod:`train.fit.augment`); ``image_cache`` a folder
    keeping the decoded images of the training and validation pipelines
    (:mod:`train.fit.image_cache`); ``options`` MMEngine
    options, nested or dotted (:func:`nested_options`), applied last.
    """
    fam = get(model).family
    cfg = load_model_config(model)
    adapted = adapt(cfg, fam)
    if adapted:   # said in the run's config.py, the artifact
        cfg.spinepipe_adapted = adapted
    _set_data(cfg, model, fam, images, train_ann, val_ann, masks)
    if img_scale is not None:
        if cfg.model.get("type") == "YOLACT":
            _yolact_input_size(cfg, int(img_scale[0]), int(img_scale[1]))
        else:
            set_transform(cfg, "Resize", scale=tuple(img_scale))
    if fam == "instance":
        _masks_at_input_size(cfg)
    if crop_size is not None and fam == "semantic":
        set_transform(cfg, "RandomCrop", crop_size=tuple(crop_size))
        cfg.model.data_preprocessor["size"] = tuple(crop_size)
    _extend_pipelines(cfg, fam, augment, image_cache)
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
    check_loops(cfg, model)
    return cfg


def _extend_pipelines(cfg: Config, fam: str, augment: list[dict[str, Any]] | None,
                      image_cache: str | Path | None) -> None:
    """spinepipe's own steps: albumentations before packing, the image cache's loading; the
    modules MMEngine imports for them (``custom_imports``)."""
    if augment:
        pipeline = cfg.train_dataloader.dataset.pipeline
        pack = next((i for i, t in enumerate(pipeline) if step_type(t).startswith("Pack")),
                    len(pipeline))
        pipeline.insert(pack, augment_step(fam, augment))
    ours = list(CUSTOM_IMPORTS["imports"]) if augment or fam == "instance" else []
    if image_cache is not None and _cache_images(cfg, Path(image_cache).expanduser().resolve()):
        ours.append(image_cache_module)
    if ours:                                    # the model config's own imports kept
        own = list((cfg.get("custom_imports") or {}).get("imports") or [])
        cfg.custom_imports = {**CUSTOM_IMPORTS, **(cfg.get("custom_imports") or {}),
                              "imports": own + [m for m in ours if m not in own]}


def _cache_images(cfg: Config, folder: Path) -> bool:
    """The training and validation pipelines' ``LoadImageFromFile`` steps made
    :class:`train.fit.image_cache.CachedLoadImageFromFile` on ``folder``; whether any was."""
    found = False
    for pipeline in pipelines(cfg, ("train_dataloader", "val_dataloader")):
        for i, step in enumerate(pipeline):
            if step_type(step) == "LoadImageFromFile":
                args = {k: v for k, v in step.items() if k != "type"}
                pipeline[i] = dict(type=cached_step, cache_dir=str(folder), **args)
                found = True
    return found


#: transforms that resize an instance model's images (and their masks, polygons included)
RESIZES = frozenset({"Resize", "RandomResize", "RandomChoiceResize", "FixShapeResize"})
#: transforms between the annotations' loading and the last resize that handle polygon masks
#: as MMDetection's :class:`PolygonMasks` (anything else there, e.g. ``Albu``, needs bitmaps)
POLYGON_SAFE = RESIZES | {"LoadImageFromFile", "LoadAnnotations", "FilterAnnotations",
                          "RandomFlip", "RandomCrop", "Pad"}


def _carries_polygons(step: Mapping[str, Any]) -> bool:
    """Whether a step does to polygon masks what it does to bitmaps (``FilterAnnotations`` by
    mask area measures a polygon's area, not its pixels: not the same instances kept)."""
    name = step_type(step)
    return name in POLYGON_SAFE and not (name == "FilterAnnotations" and step.get("by_mask"))


def _masks_at_input_size(cfg: Config) -> None:
    """An instance model's training pipeline loads its masks as polygons and rasterizes them
    after its last resize (:class:`train.fit.augment.PolygonsToBitmaps`), not at the image's
    full size before it. A pipeline with no resize, or with a step before it that needs bitmap
    masks, is left as its config wrote it (masks rasterized where they are loaded: the same
    masks, more slowly)."""
    pipeline = cfg.train_dataloader.dataset.pipeline
    names = [step_type(t) for t in pipeline]
    loads = [i for i, (n, t) in enumerate(zip(names, pipeline))
             if n == "LoadAnnotations" and t.get("with_mask")]
    resizes = [i for i, n in enumerate(names) if n in RESIZES]
    if not loads or not resizes or resizes[-1] < loads[-1] \
            or not all(_carries_polygons(t) for t in pipeline[loads[0]:resizes[-1]]):
        return
    for i in loads:
        pipeline[i]["poly2mask"] = False
    pipeline.insert(resizes[-1] + 1, dict(type="PolygonsToBitmaps"))


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
