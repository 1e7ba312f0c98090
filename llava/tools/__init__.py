"""Command-line tools that prepare checkpoints for `llava` (e.g. `python -m llava.tools.convert_internlm2`)."""
