"""al-loop: an active-learning annotation loop for glacier mapping in the Hindu Kush Himalaya."""

__version__ = "0.1.0"
