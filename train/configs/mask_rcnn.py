# Mask R-CNN (MMDetection), as in the study: instance segmentation of lumbar vertebrae and
# sacrum. Inherits MMDetection's own model config; overrides only what this data needs.
spinepipe = dict(family='instance', name='Mask R-CNN')   # the registry's entry (train/models.py)
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/spine_instance.py',
]
model = dict(
    data_preprocessor=dict(mean=[128.0], std=[64.0], bgr_to_rgb=False),
    # ResNet-50 as in MMDetection; trained from scratch (no weights can be downloaded), so
    # BN statistics are learnt (norm_eval False) and no stage is frozen.
    backbone=dict(in_channels=1, frozen_stages=-1, norm_eval=False, init_cfg=None),
    roi_head=dict(bbox_head=dict(num_classes=2), mask_head=dict(num_classes=2)),
)
# From scratch at SGD's lr 0.02 a run can blow up (a demo run's loss went NaN at iteration
# 128 while the runs before trained): the gradient is clipped as MMDetection clips it for its
# from-scratch and one-stage detectors (L2 norm at most 35).
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
