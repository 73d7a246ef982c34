"""Detection tests: kdforge.app.detection is imported first, so Ultralytics starts offline with kdforge's settings."""

import kdforge.app.detection  # noqa: F401
