"""wsop: multi-tenant real-time messaging toolkit and runtime."""

__version__ = "0.1.0"
