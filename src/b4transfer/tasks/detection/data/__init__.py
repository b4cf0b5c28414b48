"""The detection task's own data code: COCO / YOLO readers, splits,
box-aware transforms, data module, demo set."""
