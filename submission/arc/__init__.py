"""The ARC domain, numpy only: grids, tasks, augmentations, text formats, the metric, submission files."""
