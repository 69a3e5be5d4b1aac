"""The model side, loaded only in a worker process.

Trainer, TTT data, tokenizer and vocabulary, the tiny test model, backends (peft, unsloth, vLLM,
transformers).
"""
