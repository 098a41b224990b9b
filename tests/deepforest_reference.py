"""DeepForest's own prediction on one tile, offline: the reference of the optional fidelity test.

Imported only where DeepForest (and torchvision) are installed. DeepForest builds
its RetinaNet on torchvision's ImageNet backbone, which it downloads; here the
download is replaced by random weights, which the checkpoint's weights then
replace wholly (every parameter and buffer loads, strict).
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np


def deepforest_model(folder: Path):
    """``deepforest.main.deepforest`` loaded from a save_pretrained folder, as a user loads the tree model."""
    import torchvision
    from deepforest import main
    from torchvision.models._api import WeightsEnum

    def offline_weights(self, *args, **kwargs):
        return torchvision.models.resnet50().state_dict()

    with mock.patch.object(WeightsEnum, "get_state_dict", offline_weights):
        return main.deepforest(config_args={"model": {"name": str(folder)}})


def deepforest_boxes(folder: Path, raw: np.ndarray):
    """DeepForest's ``predict_image`` on a (3, H, W) 0-255 tile: its DataFrame of boxes, best first."""
    model = deepforest_model(folder)
    frame = model.predict_image(image=np.ascontiguousarray(raw.transpose(1, 2, 0)).astype("float32"))
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
