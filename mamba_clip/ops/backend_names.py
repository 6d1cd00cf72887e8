"""Names of the selective-scan backends (a leaf module: the dispatcher and the backends import it)."""

from typing import Tuple

BACKENDS: Tuple[str, ...] = ("auto", "cuda", "cpu", "torch", "ref", "triton")
