"""Client-certificate policy: the model, verification and identity matching (no sockets)."""
