from .bundle_trainer import BundleTrainTask, LabelError

__all__ = ["BundleTrainTask", "LabelError"]
