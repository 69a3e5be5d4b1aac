"""The initial fine-tune under torchrun: the run, its streaming data and the distributed hooks."""
