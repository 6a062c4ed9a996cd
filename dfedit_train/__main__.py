"""`python -m dfedit_train` = `dfedit-train`."""

from .cli import main

main()
