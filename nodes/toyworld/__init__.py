"""The toy world, in one place: a small text-to-image model the project trains itself (model.py, its weights),
the pictures it learns from (world.py), scorers that read shape and colour back (scorers.py), the measurements
the benchmarks and tests make through the pack's own code path (evaluate.py) and its training (train.py;
`python -m scripts.train_toyworld` runs it). ComfyUI loads only model.py, for the CAD Demo Model node."""
