"""Serving logic that does not depend on TorchServe: request/response/log schemas, A/B assignment."""
