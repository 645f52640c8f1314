from .uncertainty import TaskUncertainty

__all__ = ["TaskUncertainty"]
