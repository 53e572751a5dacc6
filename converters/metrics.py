"""Quality figures of a quantized tensor against its source: cosine similarity, SNR, RMSE.

Accumulated chunk by chunk in float64, so a tensor never needs to be held twice in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ErrorStats:
    n: int = 0
    sxx: float = 0.0   # sum x^2 (source)
    syy: float = 0.0   # sum y^2 (reconstruction)
    sxy: float = 0.0   # sum x*y
    see: float = 0.0   # sum (x - y)^2
    exact: bool = True

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x64 = x.astype(np.float64, copy=False).ravel()
        y64 = y.astype(np.float64, copy=False).ravel()
        e = x64 - y64
        self.n += x64.size
        self.sxx += float(x64 @ x64)
        self.syy += float(y64 @ y64)
        self.sxy += float(x64 @ y64)
        self.see += float(e @ e)
        if self.exact:  # the same values (a -0.0 that comes back as +0.0 is the same weight)
            self.exact = bool(np.array_equal(x, y))

    def add_sums(self, n: int, sxx: float, syy: float, sxy: float, see: float, exact: bool) -> None:
        """Sums measured elsewhere (the C converter's tritpack_convert_stats)."""
        self.n += n
        self.sxx += sxx
        self.syy += syy
        self.sxy += sxy
        self.see += see
        self.exact = self.exact and exact

    @property
    def cos(self) -> float:
        if self.sxx == 0.0 and self.syy == 0.0:
            return 1.0
        if self.sxx == 0.0 or self.syy == 0.0:
            return 0.0
        return self.sxy / math.sqrt(self.sxx * self.syy)

    @property
    def snr_db(self) -> float:
        if self.see == 0.0:
            return math.inf
        ratio = self.sxx / self.see
        if ratio == 0.0 or not math.isfinite(ratio):  # no signal, or an infinite error
            return -math.inf if math.isfinite(ratio) or ratio == 0.0 else math.nan
        return 10.0 * math.log10(ratio)

    @property
    def rmse(self) -> float:
        return math.sqrt(self.see / self.n) if self.n else 0.0

    def as_dict(self) -> dict:
        return {"cos": round(self.cos, 7), "snr_db": None if not math.isfinite(self.snr_db) else round(self.snr_db, 3),
                "rmse": float(f"{self.rmse:.6g}"), "exact": self.exact}
