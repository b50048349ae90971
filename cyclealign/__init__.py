"""cyclealign: align a white-box LLM with a black-box API LLM's preferences (CycleAlign, Hong et al. 2023).

The CLI (``cyclealign iterate``) is a thin shell over :func:`cyclealign.loop.iterate`.
"""

__version__ = "0.1.0"
