"""The known-target toy task: an enumerable problem trained by the same module as every task."""
