"""Segmentation loss catalogue: pure functions on logits ``(B, K, H, W)`` and int64 targets
``(B, H, W)`` with ``ignore_index`` (default 255), thin ``nn.Module`` wrappers, and
:func:`build_loss` to make one from a config value such as ``"dice+ce"``."""

from contrastseg.losses.segmentation._functional import balanced_class_weights, count_labels
from contrastseg.losses.segmentation.compound import (
    ComboLoss,
    DiceFocalLoss,
    ExpLogLoss,
    HybridFocalLoss,
    UnifiedFocalLoss,
    combo_loss,
    dice_focal_loss,
    exp_log_loss,
    hybrid_focal_loss,
    unified_focal_loss,
)
from contrastseg.losses.segmentation.distribution import (
    BalancedBCELoss,
    CrossEntropyLoss,
    FocalLoss,
    balanced_bce_loss,
    cross_entropy_loss,
    focal_loss,
)
from contrastseg.losses.segmentation.lovasz import LovaszSoftmaxLoss, lovasz_softmax_loss
from contrastseg.losses.segmentation.region import (
    DiceLoss,
    FocalTverskyLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
    dice_loss,
    focal_tversky_loss,
    jaccard_loss,
    log_cosh_dice_loss,
    sensitivity_specificity_loss,
    tversky_loss,
)
from contrastseg.losses.segmentation.registry import (
    WeightedSumLoss,
    available_losses,
    build_loss,
    loss_arguments,
)

__all__ = [
    "BalancedBCELoss",
    "ComboLoss",
    "CrossEntropyLoss",
    "DiceFocalLoss",
    "DiceLoss",
    "ExpLogLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "HybridFocalLoss",
    "JaccardLoss",
    "LogCoshDiceLoss",
    "LovaszSoftmaxLoss",
    "SensitivitySpecificityLoss",
    "TverskyLoss",
    "UnifiedFocalLoss",
    "WeightedSumLoss",
    "available_losses",
    "balanced_bce_loss",
    "balanced_class_weights",
    "build_loss",
    "combo_loss",
    "count_labels",
    "cross_entropy_loss",
    "dice_focal_loss",
    "dice_loss",
    "exp_log_loss",
    "focal_loss",
    "focal_tversky_loss",
    "hybrid_focal_loss",
    "jaccard_loss",
    "log_cosh_dice_loss",
    "loss_arguments",
    "lovasz_softmax_loss",
    "sensitivity_specificity_loss",
    "tversky_loss",
    "unified_focal_loss",
]
