"""Robust recommendation: MF / LightGCN under poisoning attacks, APR and VAT."""
