"""uhnas: LLM-guided, hardware-aware neural architecture search on conventional and unconventional hardware."""

__version__ = "0.1.0"
