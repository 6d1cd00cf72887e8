"""Selective-scan kernels and the Mamba block (filled in by issue 2)."""
