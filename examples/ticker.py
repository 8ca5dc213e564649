# examples/ticker.py
"""Sending from another thread: a background thread pushes the time to
every /clock client, and ws.send from any thread is safe too:
python examples/ticker.py --port 8000"""
import argparse
import threading
import time

from ws_multipath import MultipathServer


def build(port, host=None, period=1.0):
    server = MultipathServer(port=port, host=host)
    clock = server.create_handler("/clock")
    stop = threading.Event()

    def tick():
        while not stop.wait(period):
            clock.broadcast(time.strftime("%H:%M:%S"))  # never blocks on a slow client

    @clock.on("connection")
    def connected(ws, request):
        # a thread of its own that sends to one client: ws.send is thread-safe
        threading.Thread(target=lambda: ws.send("welcome"), daemon=True).start()

    server.on("close", stop.set)  # the thread ends with the server
    threading.Thread(target=tick, name="ticker", daemon=True).start()
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/clock", flush=True)
    server.serve_forever()
