"""Albumentations inside the MMDetection / MMSegmentation training pipelines.

params.yaml ``train.presets.<preset>.augment`` lists albumentations transforms as dicts
(``{type: RandomGamma, gamma_limit: [80, 120], p: 0.3}``, any class of ``albumentations``);
:func:`augment_step` wraps them in the packages' own adapters, inserted into the training
pipeline just before packing:

- instance models: MMDetection's ``Albu`` (boxes in ``pascal_voc`` format and bitmap masks
  follow geometric transforms; instances that leave the image are dropped);
- semantic models: MMSegmentation's ``Albu`` as :class:`GrayAlbu`, which also accepts the
  one-channel (grayscale) images spinepipe trains on (MMSegmentation's converts BGR <-> RGB,
  which fails on one channel); the class mask follows geometric transforms.

Images are uint8 here (after loading, before normalization), so albumentations' pixel-level
transforms see the exported PNG's 0-255 values.

Instance masks reach these steps as bitmaps at the input size (:class:`PolygonsToBitmaps`,
which every instance model's training pipeline has right after its resize:
:func:`train.fit.run_config.build_leaf`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS as DET_TRANSFORMS
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from mmseg.datasets.transforms import Albu as _SegAlbu
from mmseg.registry import TRANSFORMS

#: what a leaf config needs so MMEngine registers :class:`GrayAlbu` and
#: :class:`PolygonsToBitmaps` in any process
CUSTOM_IMPORTS = dict(imports=["train.fit.augment"], allow_failed_imports=False)


@DET_TRANSFORMS.register_module()
class PolygonsToBitmaps(BaseTransform):
    """Instance masks rasterized at the model's input size: loaded as polygons
    (``LoadAnnotations(poly2mask=False)``), resized as polygons, made bitmaps here, after the
    resize (MMDetection's default rasterizes each at the image's full size and resizes the
    bitmaps: at the study preset 56 of an instance model's 89 ms per image,
    ``benchmarks/bench_dataloader.py``). Bitmaps from here on, as the steps after (``Albu``,
    the models' mask targets) have them."""

    def transform(self, results: dict) -> dict:
        masks = results.get("gt_masks")
        if isinstance(masks, PolygonMasks):     # uint8, as LoadAnnotations makes them (its
            # bitmaps; PolygonMasks.to_bitmap's are bool, which OpenCV's warps refuse)
            results["gt_masks"] = BitmapMasks(masks.to_ndarray().astype(np.uint8),
                                              masks.height, masks.width)
        return results


@TRANSFORMS.register_module()
class GrayAlbu(_SegAlbu):
    """MMSegmentation's ``Albu`` for one- or three-channel images."""

    def transform(self, results: dict) -> dict:
        if results["img"].ndim == 3:
            return super().transform(results)
        results = self.mapper(results, self.keymap_to_albu)
        results = self.aug(**results)
        return self.mapper(results, self.keymap_back)


def augment_step(family: str, transforms: list[dict[str, Any]]) -> dict:
    """The pipeline step that applies ``transforms`` for a model family."""
    transforms = [dict(t) for t in transforms]
    if family == "instance":
        return dict(type="Albu", transforms=transforms,
                    bbox_params=dict(type="BboxParams", format="pascal_voc",
                                     label_fields=["gt_bboxes_labels", "gt_ignore_flags"],
                                     min_visibility=0.0, filter_lost_elements=True),
                    keymap={"img": "image", "gt_masks": "masks", "gt_bboxes": "bboxes"},
                    skip_img_without_anno=True)
    return dict(type="GrayAlbu", transforms=transforms)
