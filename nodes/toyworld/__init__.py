"""The toy world: a small text-to-image model the project trains itself (see scripts/toyworld/)."""
