"""matplotlib for writing PNG files on machines without a screen. Imported on first use: it costs about
half a second, which commands that draw nothing should not pay."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
