"""tunegate: fine-tune chat models on domain data and serve many adapters from one vLLM engine.

This package is the command line only; the work is done by `tuner`, `adapters_store`,
`gateway` and `loadtests`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
