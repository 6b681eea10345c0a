"""The published site: the data model, the renderer, the writer and the nginx that serves it."""
