"""The small CPU detector: FCOS on a light FPN over ImageNet MobileNetV2 features.

Made for tests, demos and simulations on a laptop CPU at small input sizes (128 px canvases);
the standard torchvision detectors of the registry are for real use on GPUs.
"""

from __future__ import annotations

from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.misc import FrozenBatchNorm2d

from .probing import ProbedFCOS

# MobileNetV2 feature blocks whose outputs feed the FPN: strides 8, 16 and 32.
RETURN_LAYERS = {"6": "0", "13": "1", "17": "2"}
IN_CHANNELS = [32, 96, 320]
FPN_CHANNELS = 64
# One point per location; FCOS uses the anchor size (= stride) only to scale its regression.
# The FPN's extra max-pool level adds stride 64.
ANCHOR_SIZES = ((8,), (16,), (32,), (64,))


def build_cpu_preset(num_classes: int, image_size: int, pretrained_backbone: bool) -> ProbedFCOS:
    weights = MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained_backbone else None
    # Pretrained statistics stay fixed: batches of 4 images are too small to re-estimate them.
    norm_layer = FrozenBatchNorm2d if pretrained_backbone else None
    mobilenet = mobilenet_v2(weights=weights, **({"norm_layer": norm_layer} if norm_layer else {}))
    backbone = BackboneWithFPN(
        mobilenet.features, return_layers=RETURN_LAYERS, in_channels_list=IN_CHANNELS, out_channels=FPN_CHANNELS
    )
    anchors = AnchorGenerator(sizes=ANCHOR_SIZES, aspect_ratios=((1.0,),) * len(ANCHOR_SIZES))
    head = FCOSHead(FPN_CHANNELS, num_anchors=1, num_classes=num_classes, num_convs=2)
    return ProbedFCOS(
        backbone,
        num_classes=num_classes,
        min_size=image_size,
        max_size=image_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=0.05,
        detections_per_img=100,
    )
