"""The Label Studio ML backend (protocol app, result conversions, client)."""
