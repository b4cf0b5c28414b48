"""The segmentation task's own data code: mask readers (folder, VOC, COCO),
mask transforms, data module, demo set."""
