"""vcrypto-host: the vhost-user backend serving virtual crypto devices.

Layout (what lives where):

- ``daemon``     CLI entry point (``vcrypto-host``), the listener, ``Host``
                 (all devices + the shared scheduler), signals.
- ``device``     one device per vhost-user connection: feature negotiation,
                 memory table, vrings, sessions (control plane).
- ``queue``      one data virtqueue: the adaptive poll loop, reorder, calls.
- ``datapath``   descriptor chain -> validated request -> result in place.
- ``sessions``   session objects and the per-device, refcounted, capped table.
- ``memory``     the driver's regions as the device sees them (address checks).
- ``keys``       host-held private keys for keyless sessions (``key_ref``).
- ``config``     typed YAML config with path-naming errors.
- ``metrics``    prometheus collector read at scrape time.
- ``status``     the admin status document (``vcrypto status``), built from
                 the live objects; served by ``vcrypto.admin``.
- ``scheduling`` the seam to the pool (``pool.build_scheduler``).
- ``scheduling/`` (pool config, sans-IO decisions, the trio scheduler),
  ``reorder``, ``resources/``: the resource pool, scheduling policies, fault
  handling and the reorder buffer.
"""
