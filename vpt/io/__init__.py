"""Input/output: declared tables (:mod:`vpt.io.tables`), video files (:mod:`vpt.io.video`), atomic files."""
