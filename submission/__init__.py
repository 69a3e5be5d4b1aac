"""ARC test-time-training submission kernel: per-task LoRA TTT, multi-LoRA vLLM sampling, selection."""

__version__ = "0.1.0"
