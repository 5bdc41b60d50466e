"""``backend="ray"``: server shards and workers as Ray actors (the optional extra ``gpups[ray]``)."""
from .run import RayBackend

__all__ = ["RayBackend"]
