"""kvserve: the OpenAI-compatible serving layer (protocol, auth, registry, KV-aware routing policy, app)."""
