"""`python3 -m pywrenn.envd [--host ADDR] [--port N]`."""

from pywrenn.envd.config import parse_args
from pywrenn.envd.server import serve_forever

if __name__ == "__main__":
    serve_forever(parse_args())
