"""The ``mmsr`` command line, one module per command group: the broker and topics (``broker``), the
worker (``worker``), events in and lists out (``events``), training and evaluation
(``evaluation``) and the demo (``demo``). ``base`` holds the root group and the shared options.
Importing it stays light: every command imports what it runs when it runs."""
from streams.cli import broker, demo, evaluation, events, worker  # noqa: F401 - each registers its commands
from streams.cli.base import main
from streams.cli.evaluation import eval_config

__all__ = ["main", "eval_config"]
