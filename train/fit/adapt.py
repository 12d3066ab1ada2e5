"""A model's config adapted to spinepipe's data (:func:`adapt`), whatever dataset its bases were
written for: the data block, the class counts, grayscale input, no weights from off this
machine. Every change is returned and recorded in the run's ``config.py``
(``spinepipe_adapted``); :mod:`train.fit.run_config` builds the leaf config around it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config

#: the data block of each family (classes, grayscale pipelines, dataloaders, evaluators)
DATA_BLOCK = {"instance": Path(__file__).parents[1] / "configs" / "_base_" / "spine_instance.py",
              "semantic": Path(__file__).parents[1] / "configs" / "_base_" / "spine_semantic.py"}
#: the data keys a model's config takes from its family's block when its datasets are not
#: spinepipe's (MMDetection's COCO, MMSegmentation's ADE20K or Cityscapes)
DATA_KEYS = ("train_dataloader", "val_dataloader", "test_dataloader")
#: where a checkpoint name points off this machine (MMEngine / mmcv's schemes)
REMOTE = ("http://", "https://", "torchvision://", "open-mmlab://", "openmmlab://", "mmcls://",
          "mmpretrain://", "modelzoo://", "s3://", "pavi://")


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
            for pipeline in pipelines(cfg):
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


LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def pipelines(cfg: Config, loaders: tuple[str, ...] = LOADERS):
    """Every data pipeline of a config's ``loaders`` (their datasets', through wrappers:
    ``RepeatDataset``'s ``dataset``, ``ConcatDataset``'s ``datasets``)."""
    for loader in loaders:
        yield from _pipelines_in(cfg.get(loader, {}).get("dataset"))


def _pipelines_in(dataset: Any):
    if not isinstance(dataset, Mapping):
        return
    if isinstance(dataset.get("pipeline"), list):
        yield dataset["pipeline"]
        return
    for inner in [dataset.get("dataset"), *(dataset.get("datasets") or [])]:
        yield from _pipelines_in(inner)
