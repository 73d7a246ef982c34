"""The top layer: the pipeline, CLI, Python API, teacher cache, reports, detection seam, demo and tools."""
