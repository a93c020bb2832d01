"""Generative priors for gradient inversion (GGL, GIFD)."""
