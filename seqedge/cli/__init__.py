"""The ``seqedge`` command line: one thin subcommand per library call."""
