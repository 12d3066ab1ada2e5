# PSPNet (MMSegmentation), as in the study. Inherits MMSegmentation's PSPNet-R50-D8 config;
# from scratch (no weights can be downloaded): pretrained=None.
spinepipe = dict(family='semantic', name='PSPNet')   # the registry's entry (train/models.py)
_base_ = [
    'mmseg::_base_/models/pspnet_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/spine_semantic.py',
]
model = dict(
    data_preprocessor=dict(mean=[128.0], std=[64.0], bgr_to_rgb=False, size=(256, 256)),
    pretrained=None,
    backbone=dict(in_channels=1),
    decode_head=dict(num_classes=3),
    auxiliary_head=dict(num_classes=3),
)
