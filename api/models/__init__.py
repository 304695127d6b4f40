"""The API's response models and examples (OpenAPI documentation; bodies are produced from what
the pipeline stored, without re-validation). The snapshot's own model is
``streams.models.snapshot``, shared with the leader that publishes it."""
