"""The ``archipel`` command line."""
