"""The DW stage: DEPrune masks (DCP, BWT, HSR and the balance step), the planner that turns options into
per-layer decisions, keep-zeros planning, and applying masks to a model.
"""
