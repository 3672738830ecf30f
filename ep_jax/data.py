"""Small in-memory datasets (named datasets and file readers arrive with the training issue)."""

from __future__ import annotations

import numpy as np


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR patterns of seed 000: inputs ``(4, 2)`` float32 and labels ``(4,)`` int32."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int32)
    return x, y
