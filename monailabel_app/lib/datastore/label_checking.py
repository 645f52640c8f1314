"""MONAI Label's local datastore, checking a label before it is saved.

``PUT /datastore/label`` saves the label file and its label info (``params``) at once; a label for a study the
datastore does not hold, or whose label info holds a task label the bundle does not allow, would either fail deep
inside MONAI Label (an unexplained 500) or be saved and break a later training run. This datastore refuses both
before anything is written, with one HTTP error (404 / 422) naming the study and the problem; so does an update
of a label's info (``PUT /datastore/label/info``) to a value not allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monailabel.datastore.local import LocalDatastore

__all__ = ["LabelCheckingDatastore"]


class LabelCheckingDatastore(LocalDatastore):
    """A :class:`LocalDatastore` whose :meth:`save_label` first checks the study and the label info.

    Args:
        datastore_path: the studies folder.
        check: ``check(image_id, label_info)``, raising ValueError with a message for the user.
        kwargs: further :class:`LocalDatastore` arguments.
    """

    def __init__(self, datastore_path: str, check: Callable[[str, dict[str, Any]], None], **kwargs: Any) -> None:
        if not callable(check):
            raise ValueError(f"check must be callable, got {type(check).__name__}.")
        self.check = check
        super().__init__(datastore_path, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        from fastapi import HTTPException

        if not self._datastore.objects.get(image_id):
            known = sorted(self._datastore.objects)
            raise HTTPException(status_code=404, detail=f"study {image_id}: not in the datastore ({len(known)} "
                                f"studies, e.g. {known[:5]}); add it with PUT /datastore/ first.")
        try:
            self.check(image_id, label_info or {})
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """``PUT /datastore/label/info``: the label must exist and the merged info pass the check."""
        from fastapi import HTTPException

        label = self._datastore.label(label_id, label_tag)
        if not label:
            raise HTTPException(status_code=404, detail=f"study {label_id}: no '{label_tag}' label to update the "
                                "info of; submit the label with PUT /datastore/label first.")
        try:
            self.check(label_id, {**label.info, **(info or {})})
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        super().update_label_info(label_id, label_tag, info)
