"""
What changed from one snapshot to the next: the figures (files, entries and
bytes added, changed, deleted) and one row per changed path, counted by the
scan as it compares (``tally``), or computed once from the logs for the
snapshots that no scan counted (``compute``: recovered from the grid, made
before the figures were stored, or whose snapshot before was forgotten).
"""
