"""Report stage: plots (matplotlib) and one self-contained HTML report per run (jinja2)."""
