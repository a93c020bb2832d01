"""Generative unlearning: make a trained generator stop producing one class.

``gan.py``: Adapt-then-Unlearn (Tiwary et al., TMLR 2025) and its baselines on the MNIST DCGAN;
``metrics.py``: PUL, the classifier-feature Fréchet distance and retained-class balance, shared with
the diffusion method; ``benchmarks.py``: the ``gan_unlearning`` suite.
"""
