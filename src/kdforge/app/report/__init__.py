"""Run summaries (tables, summary.json) and reports."""
