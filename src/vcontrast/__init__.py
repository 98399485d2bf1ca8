"""vcontrast: make vision-language models look at the image (CRG at inference, CAL at training)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
