"""``python -m common.pacs``: see :mod:`common.pacs.export`."""

from __future__ import annotations

import sys

from .export import main

sys.exit(main())
