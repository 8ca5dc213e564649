# examples/blocking_echo.py
"""The blocking style, as websockets' sync server writes it: a loop over the
connection's messages in the 'connection' listener:
python examples/blocking_echo.py --port 8000"""
import argparse

from ws_multipath import MultipathServer


def build(port, host=None):
    server = MultipathServer(port=port, host=host)
    echo = server.create_handler("/echo")

    @echo.on("connection")
    def handler(ws, request):  # websockets: def handler(websocket): ...
        for message in ws:  # ends when the client closes
            ws.send(message)

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/echo", flush=True)
    server.serve_forever()
