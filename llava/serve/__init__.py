"""Serving: `python -m llava.serve.cli`, an interactive (or piped) chat about images."""
