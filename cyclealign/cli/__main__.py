"""``python -m cyclealign.cli``, as the training launchers run it."""

from cyclealign.cli import app

app()
