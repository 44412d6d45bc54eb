"""The scan of Sequential Attention in three forms that agree to rounding: reference, recurrent, chunked.

Also public for other forms of the same scan (the GPU kernels, export flavours): the input checks and the
chunking helpers, so every form validates and pads its inputs the same way.
"""

from .checks import check_scan_inputs, check_step_inputs
from .chunked import check_chunk_size, chunked_scan, decayed_scores, padded_inputs, unit_lower_inverse
from .recurrent import recurrent_scan, recurrent_step
from .reference import reference_scan

__all__ = ["check_chunk_size", "check_scan_inputs", "check_step_inputs", "chunked_scan", "decayed_scores",
           "padded_inputs", "recurrent_scan", "recurrent_step", "reference_scan", "unit_lower_inverse"]
