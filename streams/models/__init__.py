"""Typed models of the data that crosses a boundary inside the pipeline (partials, chain summary,
snapshot).

Both sides of each boundary import the same model: the writer builds it, the reader validates it.
"""
