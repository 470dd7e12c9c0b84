"""vcproxy: a TLS-terminating reverse proxy on trio whose crypto runs through vcrypto."""

__version__ = "0.1.0"
