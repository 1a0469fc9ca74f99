"""The HTTP front door: OpenAI-compatible HTTP, a Realtime-style WebSocket and the web app, all a client of the
gateway over gRPC (``python -m services.http``)."""
