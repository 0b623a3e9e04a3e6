"""The offline face of the data path: ``Pipeline`` (compiled, pyx/pipeline.pyx) runs parse ->
classify -> flowbase -> select over a batch and returns one verdict per frame: an uplink
index, ``KERNEL`` (not ours: the host stack takes it) or ``DROP`` (reason in the row).
pyx/pipeline.pyx shows the path top to bottom; pyx/forward.pyx adds what the live router
does around it (what is for the router itself, egress checks, rewrite, send)."""
from engine._pipeline import DROP, KERNEL, Pipeline

__all__ = ["DROP", "KERNEL", "Pipeline"]
