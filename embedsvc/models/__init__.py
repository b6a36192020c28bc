"""embedsvc's own model families; importing this package registers them with timm."""

from embedsvc.models import gresnet
from embedsvc.models.gresnet import GResNet, checkpoint_filter_fn, fold_gresnet

__all__ = ["GResNet", "checkpoint_filter_fn", "fold_gresnet", "gresnet"]
