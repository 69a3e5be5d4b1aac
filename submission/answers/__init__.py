"""From generations to two attempts (what ARC method research edits).

Views and the sampling interface, DFS search, pooling, selection policies, re-scoring.
"""
