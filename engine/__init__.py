"""mmr: the multihomed mobile router engine.

The data path, top to bottom (one file per stage):

    frames --> parse (engine._parse)  --> classify (engine._classify)
           --> flowbase (engine._flowbase) --> select (engine._select) --> per-uplink output

Compiled stages live in ``pyx/`` and are built into ``engine._<stage>``; their pure-Python
twins (the test oracles) live in ``engine/ref/``.  There is no silent fallback: if an
extension is missing, importing the stage fails and says how to build it.
"""

__version__ = "0.1.0"

COMPILED_STAGES = ("contract", "parse", "classify", "flowbase", "select")


def compiled_modules():
    """Return {stage: path of the loaded extension}; raises ImportError if one is not built."""
    import importlib

    out = {}
    for stage in COMPILED_STAGES:
        try:
            mod = importlib.import_module("engine._" + stage)
        except ImportError as exc:  # pragma: no cover - message for a broken install
            raise ImportError(
                f"mmr's compiled stage engine._{stage} is not built ({exc}); "
                "run 'pip install .' (or 'pip install -e .') in the source tree"
            ) from exc
        out[stage] = mod.__file__
    return out
