"""The web console: server-rendered pages over the same tokens, roles and scopes as the gRPC
API, served over the control plane's TLS certificate (docs/operations.md, decision 0014)."""

__all__ = ["actions", "app", "guard", "html", "listener", "pages", "roles", "sessions", "timeline"]
