"""Choosing which patches to label next: per-pixel acquisition scores, their per-patch
reduction and mixing (:mod:`.acquisition`), and diverse batch selection (:mod:`.selection`).

Pure functions: arrays in, arrays out; no database, no files.
"""
