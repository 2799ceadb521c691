"""vpt: post-training toolkit for video generators.

The library never imports the command line (``vpt.commands``); every command is a thin adapter over it.
"""

__version__ = "0.1.0"
