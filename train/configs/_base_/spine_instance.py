# spinepipe: the COCO instances written by `spinepipe convert`, as MMDetection reads them.
# Grayscale PNG input (one channel); the leaf config (train/fit/run_config.py) sets data_root, the
# fold's annotation files, the image scale and the schedule from params.yaml.
dataset_type = 'CocoDataset'
data_root = ''
classes = ('lumbar', 'sacrum')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 128, 255)])
img_scale = (256, 640)  # (width, height) upper bound, aspect kept
train_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 ann_file='train.json', data_prefix=dict(img='images/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=4), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 ann_file='val.json', data_prefix=dict(img='images/'), test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file='val.json', metric=['bbox', 'segm'],
                     format_only=False)
test_evaluator = val_evaluator
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))
# MMDetection's 0.02 is for 16 images (8 GPUs x 2): the base train.gpu_memory_gb scales from
# (MMEngine's auto_scale_lr, switched on only there: train/fit/memory.py)
auto_scale_lr = dict(enable=False, base_batch_size=16)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
