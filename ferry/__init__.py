"""The data ferry: signed, encrypted BagIt bundles carried across isolated networks.

``ferry.outbox`` exports (sender side), ``ferry.transports`` moves bundle directories,
``ferry.ledger`` imports them exactly once (receiver side), ``ferry.bundle`` is the format and its
verification, ``ferry.crypto`` the streaming encryption and key wrapping, ``ferry.keys`` the
identities and the trust store, ``ferry.commands`` the command line.
"""
