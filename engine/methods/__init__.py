"""Ways to find steering vectors: MELBO, orthogonal chains, DCT, steering adapters, calibration of R."""
