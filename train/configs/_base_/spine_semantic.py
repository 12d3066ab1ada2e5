# spinepipe: the class masks written by `spinepipe convert` (0 background, 1 lumbar,
# 2 sacrum, 255 ignore), as MMSegmentation reads them. Grayscale PNG input; the leaf config
# (train/fit/run_config.py) sets data_root, the fold's split lists, the crop / scale and the
# schedule.
dataset_type = 'BaseSegDataset'
data_root = ''
metainfo = dict(classes=('background', 'lumbar', 'sacrum'),
                palette=[[0, 0, 0], [220, 20, 60], [0, 128, 255]])
img_scale = (256, 640)  # (width, height) upper bound, aspect kept
crop_size = (256, 256)  # (height, width) of training crops
train_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
_data = dict(type=dataset_type, data_root=data_root, metainfo=metainfo, img_suffix='.png',
             seg_map_suffix='.png', reduce_zero_label=False,
             data_prefix=dict(img_path='images', seg_map_path='masks'))
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_data, ann_file='train.txt', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_data, ann_file='val.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2000, val_interval=200)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005))
# MMSegmentation's 0.01 is for 8 images (PSPNet, DeepLabv3: 4 GPUs x 2; U-Net's file: 4 x 4):
# the base train.gpu_memory_gb scales from (MMEngine's auto_scale_lr, switched on only there)
auto_scale_lr = dict(enable=False, base_batch_size=8)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=2000,
                        by_epoch=False)]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
