"""Reporting: statistics, tables, plots and verdicts, read from run records and the plan (never the executor)."""
