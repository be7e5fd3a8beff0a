"""`python -m pywrenn.hostagent`: run the host agent with settings from the environment."""

from pywrenn.hostagent.server import serve
from pywrenn.hostagent.settings import HostAgentSettings

if __name__ == "__main__":
    serve(HostAgentSettings())
