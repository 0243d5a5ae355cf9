"""The ``hashmatch`` console script: stop-signal handling first, then the CLI.

Why a module of its own: importing the CLI took ~2 s on a busy host (then the hashing
stack; now each verb imports its libraries when it runs, and the CLI's own import is
~0.4 s), and a Ctrl-C in that time printed a KeyboardInterrupt traceback. This module
imports only :mod:`hashmatch.server.interrupts` before installing its handlers.
"""

from __future__ import annotations


def main() -> None:
    import os
    import sys

    if sys.argv[1:2] != ["serve"]:
        # gRPC's C core logs each failed TLS handshake at INFO on stderr ("I1207 ...
        # ssl_transport_security.cc:2563] Handshake failed ..."): a client verb says
        # what is wrong in its own error, which came after two such lines. Read once,
        # when grpc is first imported; an operator's own GRPC_VERBOSITY wins. `serve`
        # keeps them: the server's one record of a client refused in the handshake.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from hashmatch.server import interrupts

    interrupts.install()
    try:
        from hashmatch.server.cli import main as cli_main
    except interrupts.Interrupted as exc:  # during the imports: nothing was started
        interrupts.exit(exc.signum)
    cli_main()


if __name__ == "__main__":
    main()
