"""RVC v2 generator and discriminator with RVC's exact state-dict layout."""

from .commons import count_parameters, rand_slice_segments, sequence_mask, slice_segments
from .discriminator import MultiPeriodDiscriminator
from .generator import Synthesizer

__all__ = [
    "MultiPeriodDiscriminator",
    "Synthesizer",
    "count_parameters",
    "rand_slice_segments",
    "sequence_mask",
    "slice_segments",
]
