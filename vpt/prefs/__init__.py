"""Preference pairs (the ``prefs`` table) from human annotations, scored samples and synthetic temporal negatives."""
