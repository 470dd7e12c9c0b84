"""vcproxy: a TLS-terminating reverse proxy on trio whose crypto runs through vcrypto."""
