# examples/tls_server.py
"""wss:// directly: the server does TLS itself (no proxy in front):
python examples/tls_server.py --cert fullchain.pem --key privkey.pem --port 8443"""
import argparse
import ssl

from ws_multipath import MultipathServer


def tls_context(certfile, keyfile):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # certificate checks on, TLS 1.2+
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)  # the chain: your certificate, then the intermediates
    return context


def build(port, certfile, keyfile, host=None):
    server = MultipathServer(port=port, host=host, ssl_context=tls_context(certfile, keyfile))
    echo = server.create_handler("/echo")

    @echo.on("connection")
    def connected(ws, request):
        assert request.secure  # True for every request that came over TLS
        ws.on("message", lambda data, is_binary: ws.send(data))

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    server = build(args.port, args.cert, args.key, host=args.host or None)
    print(f"listening on wss://{args.host or 'localhost'}:{server.port}/echo", flush=True)
    server.serve_forever()
