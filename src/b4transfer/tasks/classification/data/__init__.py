"""The classification task's own data code: CSV reader, data module, mixup and samplers."""
