"""Threads and sockets: the accept loop (``acceptor``), one connection
(``connection``) with its reader thread choice (``reader``), writes
(``transport``, ``flusher``), queues (``inbox``, ``dispatch``), keepalive
(``heartbeat``), the server's timer thread (``timers``) and how many
connections the process can hold (``capacity``, from ``oslimits``)."""
