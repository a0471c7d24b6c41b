"""``python -m duly.cli``: the same as the ``duly`` console script."""

from duly.cli import main

main()
