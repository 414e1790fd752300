"""Helpers shared by the tests: generated graphs, ORT runners, CLI runners, mask checks, the sample models."""
