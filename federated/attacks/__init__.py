"""Gradient inversion attacks on captured FedSGD updates (DLG, iDLG, Inverting Gradients; GGL and GIFD to come)."""
