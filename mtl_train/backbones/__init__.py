"""Backbones: each module builds a trunk whose first blocks are shared across tasks."""
