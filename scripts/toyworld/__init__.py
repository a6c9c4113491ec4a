"""Toy world: procedural captioned images (world.py), exact scorers (scorers.py), training (train.py)."""
