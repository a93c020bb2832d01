"""Offline RL: D4RL-format datasets, TD3+BC and A2PR."""
