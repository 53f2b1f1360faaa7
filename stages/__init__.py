"""DVC stage entry points: one thin script per stage (see pipeline/cli.py)."""
