"""Writes ZeroMQ CURVE certificates for the interop tests with pyzmq, as Backend.AI's tooling does:
manager, agent and intruder (`NAME.key` public, `NAME.key_secret` secret) in the given directory."""

import sys

import zmq.auth

for name in ("manager", "agent", "intruder"):
    zmq.auth.create_certificates(sys.argv[1], name)
