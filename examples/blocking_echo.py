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
    parser.add_argument("--port", type=int, default=8000)
    build(parser.parse_args().port).serve_forever()
