"""Commonsense-reasoning benchmark (paper Table 1): LLM-Adapters data, answer extraction, hub converters."""

from experiments.commonsense import data as _data
from experiments.commonsense.data import *  # noqa: F403  (the names listed once, in data.__all__)

__all__ = list(_data.__all__)
