"""Optimizers and learning-rate schedules, routed by parameter role."""
