"""Training stages, one module each, read top to bottom over the harness in :mod:`vpt.train`."""
