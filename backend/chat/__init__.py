"""Grounded chat about the selected raster (CHAT_DESIGN.md §6).

facts.py (fact sheet from perception outputs) → router.py (templates / LM) → lm.py (builtin SmolLM2,
OpenAI-compatible endpoint, local HF directory) → verifier.py (every number, class and fact ID checked).
routes.py registers the HTTP endpoints; the server imports it by name (``backend.server.ROUTE_MODULES``).
"""
