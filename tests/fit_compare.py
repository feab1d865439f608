"""The tests' name for `trainer.compare` (Model.fit vs trainer.fit side by side)."""

from trainer.compare import XLA_REL_BOUND, Comparison, copy_state, run_both  # noqa: F401
