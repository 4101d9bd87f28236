"""Training loop, metrics, and inference engines (eager, torch.compile, AOTInductor, TensorRT)."""


def load_engine(path):
    """Load an engine directory written by `realfake engine build` (see engines/inference.py)."""
    from realfake.engines.inference import load_engine as _load_engine

    return _load_engine(path)
