"""Reinforcement learning methods: offline (A2PR), model-based (Lipschitz MBRL), level generation (DRED)."""
