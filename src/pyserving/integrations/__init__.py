"""Adapters that run pyserving inside other serving engines (Ray Serve: `integrations.ray`)."""
