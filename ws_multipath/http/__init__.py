"""The HTTP side of a connection: the request (``request``), reading and
deciding (``handshake``), the upgrade's checks and responses (``upgrade``),
user hooks of the handshake (``hooks``) and the path table (``routing``)."""
