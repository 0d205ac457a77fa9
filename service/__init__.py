"""The FastAPI job service."""
