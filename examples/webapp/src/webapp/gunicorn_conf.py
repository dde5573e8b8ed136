"""Gunicorn settings ``bin/app`` starts from; command-line options win.

Chosen for the places the examples run: a systemd service with a dedicated
user that has no home, and a read-only distroless container.
"""

import os

# Without PORT, gunicorn binds 127.0.0.1:8000; with PORT, 0.0.0.0:$PORT.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# One line per request on stdout: the journal or `docker logs` keeps it.
accesslog = "-"
# Gunicorn >= 25.1 opens a control socket under $HOME/.gunicorn by default; a
# service user has no home, and a read-only image has nowhere to write it.
control_socket_disable = True
# Worker heartbeat files: a tmpfs when there is one (containers, systemd's
# PrivateDevices), so a read-only root file system still works.
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    worker_tmp_dir = "/dev/shm"
