"""Typed models of the data that crosses a boundary inside the pipeline.

Partials, the chain summary and the snapshot: both sides of each boundary import the same model,
the writer builds it and the reader validates it.
"""
