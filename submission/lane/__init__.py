"""A CPU program-search lane: a small DSL of grid transformations and a depth-limited search for
programs that reproduce every demonstration of a task (numpy only)."""

from submission.lane.search import LaneResult, solve

__all__ = ["LaneResult", "solve"]
