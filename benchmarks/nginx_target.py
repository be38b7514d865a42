"""nginx as a reference streaming reverse proxy for benchmarks/overhead.py (the "nginx" target).

    python benchmarks/nginx_target.py --upstream http://127.0.0.1:8000 --port 8789   # runs it in the foreground

One worker process, configured for SSE pass-through (no response or request buffering, HTTP/1.1 with
keep-alive to the upstream through an `upstream` block, keep-alive reuse on both legs, bodies up to
16 MiB), everything it writes (pid, error log, temp files) in a directory of our own, access log off.
The benchmark starts it as `nginx -p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off;'` and pins
and prioritises it like the llmtap proxy; the worker inherits both from the master.
If nginx is not installed, ensure_nginx() installs Debian's package with apt-get (root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{
        server {upstream_host}:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {host}:{port} backlog=1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
        client_max_body_size 16m;
        client_body_buffer_size 1m;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def ensure_nginx() -> str:
    """The nginx executable; installs Debian's nginx package first if there is none on PATH."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "nginx"]
    print("nginx not found: " + " ".join(install), file=sys.stderr, flush=True)
    # The package's postinst would start a system nginx on port 80 and leave it running: a policy-rc.d that
    # answers 101 ("action forbidden") stops that, for the time of the install only.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            print("install failed: apt-get update, then again", file=sys.stderr, flush=True)
            subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, check=True)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(found, os.X_OK):
        raise RuntimeError("nginx is still not installed")
    return found


def nginx_version(exe: str) -> str:
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def write_config(directory: Path, port: int, upstream: str, host: str = "127.0.0.1") -> Path:
    """nginx.conf in `directory` (which also gets the pid file, error log and temp dirs)."""
    parts = urlsplit(upstream)
    # As root the worker would otherwise run as nobody and could not write to our temp directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(CONF.format(user=user, dir=directory, upstream_host=parts.hostname, upstream_port=parts.port,
                                host=host, port=port))
    return conf


def nginx_argv(exe: str, conf: Path) -> list[str]:
    directory = conf.parent
    return [exe, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf), "-g", "daemon off;"]


def process_tree(pid: int) -> list[int]:
    """pid and its children (the nginx master and its worker), from /proc/<pid>/task/*/children."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="run nginx as an SSE pass-through proxy in the foreground")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=8789)
    parser.add_argument("--print-config", action="store_true")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="llmtap-nginx-"))
    conf = write_config(directory, args.port, args.upstream)
    if args.print_config:
        print(conf.read_text())
        return
    exe = ensure_nginx()
    os.execv(exe, nginx_argv(exe, conf))


if __name__ == "__main__":
    main()
