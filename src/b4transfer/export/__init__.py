"""What every task's exports share: the artefact files, the timm-format writer and reader, the model card."""
