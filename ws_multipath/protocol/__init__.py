"""The WebSocket protocol without I/O: frames in (``frames``) and out
(``writer``), masking and the optional C speedups (``masking``), the closing
state machine (``closing``), permessage-deflate (``deflate``) and the events
the frame reader returns (``events``)."""

from .masking import SPEEDUPS

__all__ = ["SPEEDUPS"]
