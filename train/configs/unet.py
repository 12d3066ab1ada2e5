# U-Net (MMSegmentation), as in the study: semantic segmentation into background, lumbar,
# sacrum. Inherits MMSegmentation's own UNet-S5-D16 + FCN head config.
spinepipe = dict(family='semantic', name='U-Net')   # the registry's entry (train/models.py)
_base_ = [
    'mmseg::_base_/models/fcn_unet_s5-d16.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/spine_semantic.py',
]
model = dict(
    data_preprocessor=dict(mean=[128.0], std=[64.0], bgr_to_rgb=False, size=(256, 256)),
    backbone=dict(in_channels=1),
    decode_head=dict(num_classes=3),
    auxiliary_head=dict(num_classes=3),
    # whole-image inference: phantom and clinical images fit in memory at training scale
    test_cfg=dict(mode='whole', _delete_=True),
)
# MMSegmentation's UNet configs: its 0.01 for 16 images (4 GPUs x 4)
auto_scale_lr = dict(enable=False, base_batch_size=16)
