"""Detection tests: kdforge.detection is imported first, so Ultralytics starts offline with kdforge's settings."""

import kdforge.detection  # noqa: F401
