"""Export: a model -> ``step`` and ``chunk`` entry points -> one artifact directory per export, per target."""
