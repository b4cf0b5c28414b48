"""b4transfer: fine-tuning and transfer learning around timm's EfficientNet-B4."""

__version__ = "0.1.0"
