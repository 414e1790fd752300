"""Accuracy recovery without training: calibration data, the least-squares refit of kept DW weights,
sensitivity measurement and per-layer ratio allocation, and the staged forward runner they share.
"""
