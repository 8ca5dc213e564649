# examples/chat_client.py
"""A Python client for the tutorial's chat: python examples/chat_client.py ws://localhost:8000/chat"""
import sys

from websockets.sync.client import connect  # pip install websockets


def say_hello(url):
    with connect(url) as ws:
        ws.send("hello from Python")
        return ws.recv()  # the broadcast comes back to its sender too


if __name__ == "__main__":
    print(say_hello(sys.argv[1] if len(sys.argv) > 1 else "ws://localhost:8000/chat"))
