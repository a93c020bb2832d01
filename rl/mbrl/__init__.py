"""Model-based RL: MBPO with an ensemble or a single dynamics model with a Lipschitz-regularized critic."""
