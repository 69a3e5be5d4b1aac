"""Commands composed from the library: kaggle, dry-run, show-prompt, gpu-check, report."""
