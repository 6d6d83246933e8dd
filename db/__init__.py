"""The SQL store: models, sessions, queries and migrations. Nothing outside ``db/`` writes SQL."""
