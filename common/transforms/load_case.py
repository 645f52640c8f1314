"""``LoadImaged`` that names the case and the file, and says what is wrong with it, when a file cannot be read."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from os import PathLike
from typing import Any

from monai.data import ImageReader
from monai.transforms import LoadImaged

from ..errors import DatasetError, read_error

__all__ = ["LoadCaseImaged"]


def _source_name(source: Any) -> str:
    """The file (or DICOM folder) a ``LoadImaged`` input names; the first of a list, with the count of the others."""
    if isinstance(source, (str, PathLike)):
        return str(source)
    items = list(source) if isinstance(source, Sequence) else [source]
    if not items:
        return repr(source)
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return f"{_source_name(items[0])}{more}"


class LoadCaseImaged(LoadImaged):
    """:class:`monai.transforms.LoadImaged` whose read failures are a :class:`~common.errors.DatasetError` naming
    the case and the file and saying what is wrong with it (missing, empty, not gzip, truncated, damaged, not an
    image; see :func:`common.errors.read_error`) instead of a bare ``EOFError`` or ``OSError: image file is
    truncated``. Use it for every image and volume a bundle reads::

        {"_target_": "common.transforms.LoadCaseImaged", "keys": ["image"], "reader": "PILReader", "image_only": true}

    A single ``reader`` is used alone: ``LoadImage`` would otherwise try every other installed reader after it fails
    and report only "cannot find a suitable reader". A DatasetError of a reader (e.g. a bad DICOM series) passes
    through, with the case added in front.

    Args:
        keys: keys of the file paths to load.
        reader: as ``LoadImaged``.
        case_key: key of the case id used in messages (absent: the message names the file only).
        kwargs: other ``LoadImaged`` arguments (``image_only``, ``ensure_channel_first``, ...).
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        reader: type[ImageReader] | str | ImageReader | None = None,
        case_key: str = "case",
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, reader=reader, **kwargs)
        self.case_key = case_key
        single = reader is not None and not isinstance(reader, (list, tuple))
        self._reader: ImageReader | None = self._loader.readers[-1] if single else None

    def _load(self, source: Any, case: str | None, reader: ImageReader | None) -> Any:
        try:
            return self._loader(source, reader if reader is not None else self._reader)
        except DatasetError as err:
            if case is None or f"case '{case}'" in str(err):
                raise
            raise DatasetError(f"case '{case}', {err}") from err
        except Exception as err:  # readers raise many types (EOFError, OSError, ImageFileError, ...)
            raise read_error(case, _source_name(source), err) from err

    def __call__(self, data: Mapping[Hashable, Any], reader: ImageReader | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        case = None if d.get(self.case_key) is None else str(d[self.case_key])
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            loaded = self._load(d[key], case, reader)
            if self._loader.image_only:
                d[key] = loaded
                continue
            if not isinstance(loaded, (tuple, list)):
                raise TypeError(f"loader must return a tuple or list (because image_only=False), got {type(loaded)}.")
            d[key] = loaded[0]
            if not isinstance(loaded[1], dict):
                raise TypeError(f"metadata must be a dict, got {type(loaded[1])}.")
            meta_key = meta_key or f"{key}_{meta_key_postfix}"
            if meta_key in d and not self.overwriting:
                raise KeyError(f"Metadata with key {meta_key} already exists and overwriting=False.")
            d[meta_key] = loaded[1]
        return d
