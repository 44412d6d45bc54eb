"""The scan of Sequential Attention in three forms that agree to rounding: reference, recurrent, chunked."""

from .chunked import chunked_scan, decayed_scores, unit_lower_inverse
from .recurrent import recurrent_scan, recurrent_step
from .reference import reference_scan

__all__ = ["chunked_scan", "decayed_scores", "recurrent_scan", "recurrent_step", "reference_scan",
           "unit_lower_inverse"]
