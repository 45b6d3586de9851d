"""reimagine: a self-hosted, fal.ai-compatible server for `bria/reimagine/3.2`."""

__version__ = "0.1.0"
ENDPOINT_ID = "bria/reimagine/3.2"
