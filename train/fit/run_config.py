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
from train.fit.augment import CUSTOM_IMPORTS, augment_step
from train.models import BEST_METRIC, family_of_scope, get

#: the data block of each family (classes, grayscale pipelines, dataloaders, evaluators)
DATA_BLOCK = {"instance": Path(__file__).parents[1] / "configs" / "_base_" / "spine_instance.py",
              "semantic": Path(__file__).parents[1] / "configs" / "_base_" / "spine_semantic.py"}
#: the data keys a model's config takes from its family's block when its datasets are not
#: spinepipe's (MMDetection's COCO, MMSegmentation's ADE20K or Cityscapes)
DATA_KEYS = ("train_dataloader", "val_dataloader", "test_dataloader")
#: where a checkpoint name points off this machine (MMEngine / mmcv's schemes)
REMOTE = ("http://", "https://", "torchvision://", "open-mmlab://", "openmmlab://", "mmcls://",
          "mmpretrain://", "modelzoo://", "s3://", "pavi://")


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


def adapt(cfg: Config, fam: str) -> list[str]:
    """Make a model's config read spinepipe's data, whatever dataset its bases were written
    for; returns what it changed (``spinepipe_adapted`` in the run's config.py).

    - data: a dataloader whose dataset does not carry spinepipe's classes (MMDetection's COCO,
      MMSegmentation's ADE20K) gets the family's dataset block (``_base_/spine_<family>.py``:
      grayscale pipelines, classes, annotation files), and its evaluator that block's (the
      metric list stays the config's own); batch size and samplers stay the config's own (an
      iteration-based schedule samples endlessly, an epoch-based one does not). A config that
      writes its own spinepipe dataset (YOLACT's fixed-size pipeline) keeps it.
    - classes: every ``num_classes`` (and ``num_things_classes``) of the model other than 1
      and 2 (binary heads: region proposals' objectness, edges) becomes the family's count (2
      instance classes; 3 semantic, background included); ``num_stuff_classes`` becomes 0; a
      ``class_weight`` list of another length is dropped (uniform weights).
    - grayscale: a colour model's input (3 channels, or none said) becomes one channel
      (``backbone.in_channels``), mean 128, std 64, no channel swap; a backbone that takes no
      ``in_channels`` reads the image as three equal channels instead. An instance model
      given the block pads its batches to multiples of 32 (the block's pipelines do not pad).
    - weights: a ``Pretrained`` source off this machine (``torchvision://``, ``https://``) is
      switched off: nothing can be downloaded, and a model trains from scratch unless
      ``train.pretrained`` names a local checkpoint (``load_from``); the layers it froze
      (``frozen_stages``, ``norm_eval``) learn.
    """
    block = Config.fromfile(str(DATA_BLOCK[fam]))
    classes = tuple(block.metainfo["classes"])
    changed = []
    for key in DATA_KEYS:
        ds = (cfg.get(key) or {}).get("dataset") or {}
        if tuple((ds.get("metainfo") or {}).get("classes", ())) != classes:
            loader = cfg.get(key) or {}
            own = ("batch_size", "sampler", "batch_sampler") if key == "train_dataloader" \
                else ("batch_size",)
            cfg[key] = {**block[key], **{k: loader[k] for k in own if k in loader}}
            changed.append(f"{key}: spinepipe's {fam} dataset")
    for key in ("val_evaluator", "test_evaluator"):
        ev = cfg.get(key)
        if not isinstance(ev, dict) or ev.get("type") != block[key]["type"] \
                or key.replace("evaluator", "dataloader") in changed:
            own = ev.get("metric") if isinstance(ev, dict) and \
                ev.get("type") == block[key]["type"] else None
            cfg[key] = {**block[key], **({"metric": own} if own else {})}
    model = cfg.model
    changed += _classes(model, len(classes))
    changed += _grayscale(cfg, model)
    pre = model.get("data_preprocessor")
    if fam == "instance" and any(k.startswith(DATA_KEYS) for k in changed) \
            and isinstance(pre, dict) and ((pre.get("pad_size_divisor") or 1) < 32
                                           or not pre.get("pad_mask")):
        # the block's pipelines keep the aspect and do not pad (package configs pad in theirs,
        # e.g. RTMDet's 640 square): FPN-style necks need sides divisible by the largest
        # stride, and the masks padded with the image
        pre["pad_size_divisor"] = max(32, pre.get("pad_size_divisor") or 1)
        pre["pad_mask"] = True
        changed.append("data_preprocessor: pads images and masks to multiples of 32")
    changed += _no_remote_weights(model)
    return changed


def _classes(model, n: int) -> list[str]:
    changed = []
    for node in _dicts(model):
        head = node.get("type", "a head")
        for key in ("num_classes", "num_things_classes"):
            old = node.get(key)
            if isinstance(old, int) and old not in (1, 2, n):
                node[key] = n
                changed.append(f"{head}: {key} {old} -> {n}")
                for sub in _dicts(node):
                    weight = sub.get("class_weight")
                    if isinstance(weight, (list, tuple)) and len(weight) not in (n, n + 1):
                        sub["class_weight"] = None
                        changed.append(f"{head}: class_weight of {len(weight)} classes dropped")
        if node.get("num_stuff_classes"):
            changed.append(f"{head}: num_stuff_classes {node['num_stuff_classes']} -> 0")
            node["num_stuff_classes"] = 0
    return changed


def _grayscale(cfg: Config, model) -> list[str]:
    changed = []
    if not isinstance(model.get("data_preprocessor"), dict) \
            and isinstance(cfg.get("data_preprocessor"), dict):
        model["data_preprocessor"] = dict(cfg.data_preprocessor)   # the model's, as it builds
    pre = model.get("data_preprocessor")
    if not isinstance(pre, dict):
        return changed
    backbone = model.get("backbone")
    if len(pre.get("mean") or [0, 0, 0]) == 3:
        one = isinstance(backbone, dict) and (backbone.get("in_channels") == 1 or (
            backbone.get("in_channels", 3) == 3
            and _takes(backbone, "in_channels", cfg.get("default_scope"))))
        channels = 1 if one else 3
        pre["mean"], pre["std"] = [128.0] * channels, [64.0] * channels
        changed.append(f"grayscale input: mean 128, std 64 ({channels} channel"
                       f"{'s' if channels > 1 else ''})")
        if one and backbone.get("in_channels") != 1:
            backbone["in_channels"] = 1
            changed.append("backbone: in_channels 1")
        else:
            for pipeline in _pipelines(cfg):
                for step in pipeline:
                    if step.get("type") == "LoadImageFromFile":
                        step["color_type"] = "color"
            changed.append(f"backbone {backbone.get('type') if isinstance(backbone, dict) else ''}"
                           " takes no in_channels: images read as three equal channels")
    for swap in ("bgr_to_rgb", "rgb_to_bgr"):
        if pre.get(swap):
            pre[swap] = False
    return changed


def _takes(node: dict, argument: str, scope: str | None) -> bool:
    """Whether the registered class of ``node`` takes ``argument`` (its own or a parent's
    ``__init__`` by keywords); True when the class cannot be looked up."""
    import importlib
    import inspect

    try:   # the package's own registry (mmdet.registry.MODELS): it imports its models
        registry = importlib.import_module(f"{scope or 'mmengine'}.registry").MODELS
        kind = node.get("type")
        cls = registry.get(kind) if isinstance(kind, str) else kind
    except Exception:   # noqa: BLE001 - an unknown type: MMEngine says so when it builds
        cls = None
    if cls is None:
        return True
    for klass in cls.__mro__:       # up through the classes that pass **kwargs on
        params = inspect.signature(klass.__init__).parameters
        if argument in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
    return False


def _no_remote_weights(model) -> list[str]:
    changed = []
    if isinstance(model.get("pretrained"), str) and _remote(model.pretrained):
        changed.append(f"pretrained {model.pretrained} off")
        model["pretrained"] = None
        if isinstance(model.get("backbone"), dict):
            changed += _unfreeze(model.backbone)
    for node in _dicts(model):
        init = node.get("init_cfg")
        inits = init if isinstance(init, list) else [init]
        off = [i for i in inits if isinstance(i, dict) and i.get("type") == "Pretrained"
               and _remote(str(i.get("checkpoint", "")))]
        if off:
            changed += [f"Pretrained {i.get('checkpoint')} off" for i in off]
            kept = [i for i in inits if i not in off]
            node["init_cfg"] = kept if isinstance(init, list) and kept else None
            changed += _unfreeze(node)
    return changed


def _unfreeze(node: dict) -> list[str]:
    """Layers frozen for pretrained weights learn when there are none: random stages and
    batch-norm statistics left as initialised would stay so."""
    changed = []
    if isinstance(node.get("frozen_stages"), int) and node["frozen_stages"] >= 0:
        node["frozen_stages"] = -1
        changed.append(f"{node.get('type', 'backbone')}: frozen_stages -1 (no weights to keep)")
    if node.get("norm_eval"):
        node["norm_eval"] = False
        changed.append(f"{node.get('type', 'backbone')}: norm_eval False (its statistics learn)")
    return changed


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


def _remote(source: str) -> bool:
    """A checkpoint that is not a file on this machine (a URL, a model zoo name)."""
    return source.startswith(REMOTE) or not Path(source).is_file()


def _dicts(node: Any):
    """Every dict in a config tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _dicts(value)


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
    check_loops(cfg, model)
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
