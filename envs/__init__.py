"""Gymnasium environment plugins, registered through entry points."""
