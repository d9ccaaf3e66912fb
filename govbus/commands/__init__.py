"""Command groups of the ``govbus`` command line, each in its own module."""
