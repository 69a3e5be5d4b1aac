"""What runs inside a GPU worker process: the worker main loop, the chunk pipeline, start-up calibration."""
