"""The WebSocket protocol without I/O: frames in and out (``frames``), the
closing state machine (``closing``), permessage-deflate (``deflate``) and the
events the frame reader returns (``events``)."""

from .frames import SPEEDUPS

__all__ = ["SPEEDUPS"]
