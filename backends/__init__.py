"""The Label Studio ML backend (protocol app, result conversions, client)."""

SECRET_HEADER = "X-Al-Loop-Secret"  # the webhook's shared secret: the app checks it, `al-loop connect` sets it
