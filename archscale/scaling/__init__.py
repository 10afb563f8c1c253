"""Scaling: parametrizations (SP, muP, muP++), transfer laws, parameter and FLOP counting, curve fits."""
