"""permessage-deflate negotiation (RFC 7692 section 7) and settings."""

from __future__ import annotations

import pytest

from ws_multipath.protocol.deflate import DeflateSettings, negotiate_deflate


def agree(offer: str, **settings):
    settings.setdefault("server_max_window_bits", 15)  # RFC 7692's defaults, so that the answers show the client's parameters
    settings.setdefault("client_max_window_bits", None)
    result = negotiate_deflate([offer], DeflateSettings(**settings), 1 << 20)
    return None if result is None else result[0]


def test_plain_offer_is_accepted():
    assert agree("permessage-deflate") == "permessage-deflate"


def test_default_window_is_announced():
    # websockets' defaults: a 4 KiB window and zlib memory level 5 (32 KiB of compressor, not 256)
    result = negotiate_deflate(["permessage-deflate"], DeflateSettings(), 1 << 20)
    assert result is not None and result[0] == "permessage-deflate; server_max_window_bits=12"
    assert result[1]._memory_level == 5 and result[1]._compression_level == -1
    result = negotiate_deflate(["permessage-deflate; client_max_window_bits"], DeflateSettings(), 1 << 20)
    assert result is not None and result[0] == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"


def test_memory_and_compression_levels_are_checked():
    assert DeflateSettings.from_option({"memory_level": 9, "compression_level": 1}).memory_level == 9
    with pytest.raises(ValueError, match="memory_level"):
        DeflateSettings.from_option({"memory_level": 0})
    with pytest.raises(ValueError, match="compression_level"):
        DeflateSettings.from_option({"compression_level": 10})


def test_client_parameters_are_answered():
    assert agree("permessage-deflate; client_max_window_bits") == "permessage-deflate"
    assert agree("permessage-deflate; client_max_window_bits", client_max_window_bits=10) == "permessage-deflate; client_max_window_bits=10"
    assert agree("permessage-deflate; server_max_window_bits=12") == "permessage-deflate; server_max_window_bits=12"
    assert agree("permessage-deflate; server_no_context_takeover") == "permessage-deflate; server_no_context_takeover"


def test_server_settings_are_announced():
    assert agree("permessage-deflate", server_no_context_takeover=True, server_max_window_bits=11) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11"
    )
    assert agree("permessage-deflate", client_no_context_takeover=True) == "permessage-deflate; client_no_context_takeover"


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot honour an 8-bit window
        "permessage-deflate; server_max_window_bits",  # value required
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "x-webkit-deflate-frame",
    ],
)
def test_unacceptable_offers_are_declined(offer):
    assert agree(offer) is None


def test_first_acceptable_offer_wins():
    offers = "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10"
    assert agree(offers) == "permessage-deflate; server_max_window_bits=10"


def test_settings_from_option():
    assert DeflateSettings.from_option(False) is None and DeflateSettings.from_option(True) == DeflateSettings()
    assert DeflateSettings.from_option({"threshold": 0}).threshold == 0
    with pytest.raises(TypeError, match="per_message_deflate"):
        DeflateSettings.from_option("yes")
    with pytest.raises(ValueError, match="client_max_window_bits"):
        DeflateSettings.from_option({"client_max_window_bits": 8})
