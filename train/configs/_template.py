# A new model is one file: copy this one to train/configs/<name>.py (lower case, digits, _;
# <name> names its runs models/<name>/fold<k>, its --model and its DVC stages) and change the
# two lines below. Files starting with _ (this template) are not models.
#
# The declaration: its family ('instance': MMDetection, COCO instances; 'semantic':
# MMSegmentation, class masks) and how the report and the help texts name it.
spinepipe = dict(family='instance', name='SOLOv2')
# One MMDetection / MMSegmentation config to inherit, as the package ships it (mmdet::...,
# mmseg::...). Only one: two full configs (or one and ./_base_/spine_instance.py) both set the
# dataloaders and the schedule, which MMEngine refuses ("two of its _base_ files set ...").
# Semantic, e.g.: 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'
_base_ = ['mmdet::solov2/solov2_r50_fpn_1x_coco.py']
#
# What spinepipe does to it when it builds a run (train/fit/adapt.py; each change is
# listed as spinepipe_adapted in the run's config.py):
# - the data: dataloaders whose dataset is not spinepipe's (COCO, ADE20K, Cityscapes) get the
#   family's data block, ./_base_/spine_instance.py or ./_base_/spine_semantic.py: grayscale
#   pipelines, the classes (lumbar, sacrum), this run's fold; instance batches are padded to
#   multiples of 32. Batch size and sampler stay this config's. To write your own data block
#   instead, copy that file's pipelines and dataloaders here, keeping metainfo (the classes)
#   in every dataset (yolact.py does).
# - the classes: each head's num_classes (and num_things_classes) other than 1 and 2 (binary
#   heads) becomes 2 (instance) or 3 (semantic: background, lumbar, sacrum); a class_weight
#   list of another dataset's length is dropped.
# - grayscale: a 3-channel input becomes one channel (backbone in_channels=1, mean 128, std 64);
#   a backbone without in_channels reads the image as three equal channels.
# - weights: Pretrained sources off this machine (torchvision://, https://) are switched off,
#   and what they froze learns (frozen_stages=-1, norm_eval=False): nothing downloads, the
#   model trains from scratch, or from train.pretrained.<name> in params.yaml (a local
#   checkpoint).
# - the image scale and crop of the preset (params.yaml train.presets), the augmentation, the
#   best-checkpoint metric of its family (instance: coco/segm_mAP, semantic: mIoU).
# The name must differ from every other model's (the report's columns are names). Inherit a
# package config or a file of ./_base_/, not another model's file: this file and ./_base_/ are
# what its DVC train stage depends on.
#
# The schedule is the inherited one (SOLOv2 1x: 12 epochs, MMDetection's learning rate for 16
# images per batch). For the CPU demo give the model a block in params.yaml
# train.presets.demo.models.<name>.options (a smaller backbone, fewer epochs), or pass
# --cfg-options; an option its loop does not take (max_iters on an epoch-based loop) is a
# one-line error before anything trains.
#
# Own settings go below, as in any MMEngine config, e.g.:
# model = dict(mask_head=dict(feat_channels=256))
