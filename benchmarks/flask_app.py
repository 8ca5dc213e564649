"""The tiny Flask app of the HTTP keep-alive scenario: served by ws_multipath
(``wsgi_app=``), Werkzeug's threaded dev server and ``gunicorn --threads``
(``gunicorn flask_app:app``)."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index() -> str:
    return "Hello, World!"
