"""Pure tensor functions (no file I/O, no global state): losses, samplers, advantages. Shapes in docstrings."""
