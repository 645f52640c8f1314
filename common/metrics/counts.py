"""Ignite metric counting evaluated samples and distinct cases."""

from __future__ import annotations

from typing import Any

from ignite.metrics.metric import reinit__is_reduced
from monai.utils import CommonKeys as Keys

from .output_dict import OutputDictMetric

__all__ = ["SampleCounts"]


class SampleCounts(OutputDictMetric):
    """Returns ``{"n_<sample_name>": samples seen, "n_<case_name>": distinct case ids}``.

    Case ids are read from ``output["label"][case_key]``.
    """


    def __init__(self, case_key: str = "case", sample_name: str = "slices", case_name: str = "cases") -> None:
        self.case_key, self.sample_name, self.case_name = case_key, sample_name, case_name
        super().__init__(output_transform=lambda x: x, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._n = 0
        self._cases: set[str] = set()

    @reinit__is_reduced
    def update(self, output: dict[str, Any]) -> None:
        cases = list(output[Keys.LABEL][self.case_key])
        self._n += len(cases)
        self._cases.update(str(c) for c in cases)

    def compute(self) -> dict[str, int]:
        return {f"n_{self.sample_name}": self._n, f"n_{self.case_name}": len(self._cases)}
