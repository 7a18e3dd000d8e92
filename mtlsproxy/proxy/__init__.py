"""asyncio: listeners, upstream connections, flow control and the admin endpoint."""
