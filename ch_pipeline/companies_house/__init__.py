"""The source system: the Companies House streaming API client, its event model and a local replay server."""
