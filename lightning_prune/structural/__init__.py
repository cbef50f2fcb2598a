"""Dependency-aware surgery (torch-pruning) and structural history replay."""
