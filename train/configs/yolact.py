# YOLACT (MMDetection), as in the study. Inherits MMDetection's own YOLACT-R50 config (model,
# schedule, runtime) and overrides classes, grayscale input and the dataset. YOLACT works on a
# fixed input size (MMDetection: a 550 square); a preset's size keeps the radiographs' aspect
# (train/fit/run_config.py sets it and the anchor strides that follow from it).
spinepipe = dict(family='instance', name='YOLACT')   # the registry's entry (train/models.py)
_base_ = ['mmdet::yolact/yolact_r50_1xb8-55e_coco.py']
input_size = 550
classes = ('lumbar', 'sacrum')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 128, 255)])
model = dict(
    data_preprocessor=dict(mean=[128.0], std=[64.0], bgr_to_rgb=False),
    backbone=dict(in_channels=1, init_cfg=None),
    bbox_head=dict(num_classes=2),
    mask_head=dict(num_classes=2),
)
train_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(4.0, 4.0)),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='', metainfo=metainfo, ann_file='train.json',
                 data_prefix=dict(img='images/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='', metainfo=metainfo, ann_file='val.json',
                 data_prefix=dict(img='images/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='val.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator
