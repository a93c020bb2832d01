"""Unsupervised environment design: PPO students, level samplers (DR, uniform, PLR, DRED), the level VAE."""
