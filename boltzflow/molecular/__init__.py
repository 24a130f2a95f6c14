"""Molecular systems: alanine dipeptide, MD data generation, umbrella sampling with MBAR."""
