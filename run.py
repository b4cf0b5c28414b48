"""Fine-tune EfficientNet-B4 (or any timm EfficientNet): ``python run.py [key=value ...]``.

Examples:
    python run.py                                        # fine-tune on the generated demo data
    python run.py data=folder data.root=/data/pets       # your own class folders
    python run.py mode=predict ckpt_path=outputs/.../checkpoints/last.ckpt predict.input=/data/new
"""

import sys
from pathlib import Path

try:
    from b4transfer.cli.entry import main
except ModuleNotFoundError:  # a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from b4transfer.cli.entry import main

if __name__ == "__main__":
    main()
