"""`serve`'s server: who may use it (access), the requests it answers, checked before any work
(requests), the engine that batches them on the model (engine), and the HTTP API (app)."""
