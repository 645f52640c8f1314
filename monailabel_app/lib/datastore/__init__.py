from .label_checking import LabelCheckingDatastore

__all__ = ["LabelCheckingDatastore"]
