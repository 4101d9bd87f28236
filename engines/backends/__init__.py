"""One inference backend per file behind the interface of engines/inference.py."""
