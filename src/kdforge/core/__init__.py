"""The bottom layer: errors, the registry, atomic writes, the run config and the process context."""
