"""The production topology of docker-compose.yml, rehearsed as processes (no container engine runs here).

What is taken from `docker-compose config` unchanged: each leadsync service's command and environment (the
operator's .env included), the proxy's environment and its nginx template. What is rewritten, and only that:
the service host names (postgres, redis, the SMTP relay, api.hubapi.com, the proxy's fixed address) become the
local servers the test support starts, container paths become the host folders compose mounts there (/app/packet,
/app/var, /etc/nginx/certs), and the fixed ports (8000, 9101, 80, 443) become free ones. Debian's nginx runs the
same template, rendered by Debian's envsubst the way the official image renders it, with a throwaway
certificate made by openssl, as an unprivileged user.

Example:
    >>> with Rehearsal(tmp_path, services).start() as rehearsal:
    ...     rehearsal.client(local_address="127.0.0.2").post("/forms/info-packet", json={...})
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.compose import LEADSYNC_SERVICES, make_project, render
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import (
    PostgresServer,
    RedisServer,
    SmtpSink,
    _make_temp_dir,
    _ProcessServer,
    find_binary,
    free_port,
)
from tests.support.stack import wait_for

SITE_DOMAIN = "forms.clinic.test"
MAIL_FROM = "Rehearsal Clinic <packets@clinic.test>"
SMTP_RELAY = "smtp.relay.clinic.test"
HUBSPOT_TOKEN = "pat-rehearsal-token"
# The proxy's fixed address on the compose network (docker-compose.yml, networks.edge): here nginx is on loopback.
PROXY_COMPOSE_ADDRESS = "172.31.240.10"
# A tiny but real PDF, so the test can tell the configured packet from the default one.
PACKET_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%% leadsync production rehearsal packet\n%%EOF\n"
)


def sample_env(cert_dir: Path) -> dict[str, str]:
    """The .env an operator would write for production (secrets generated as README "Deploy" says)."""
    return {
        "SITE_DOMAIN": SITE_DOMAIN,
        "TLS_CERT_DIR": str(cert_dir),
        "PUBLIC_BASE_URL": f"https://{SITE_DOMAIN}",
        "FORM_TOKEN_SECRET": secrets.token_urlsafe(48),
        "OPS_TOKEN": secrets.token_urlsafe(32),
        "HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN,
        "HUBSPOT_BASE_URL": "https://api.hubapi.com",
        "SMTP_HOST": SMTP_RELAY,
        # The test's SMTP server speaks plain SMTP on loopback (no relay credentials are sent).
        "SMTP_PORT": "25",
        "SMTP_SECURITY": "none",
        "MAIL_FROM": MAIL_FROM,
        "INFO_PACKET_PATH": "/app/packet/rehearsal-packet.pdf",
        "ALLOWED_ORIGINS": f"https://www.clinic.test,https://{SITE_DOMAIN}",
        # Production rate limits stay at their defaults (20 posts per IP per 10 minutes): not set here.
    }


def nginx_user() -> pwd.struct_passwd | None:
    """nginx runs unprivileged: as root, as `nobody`; otherwise as ourselves."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def make_certificate() -> Path:
    """fullchain.pem + privkey.pem for SITE_DOMAIN and 127.0.0.1, self-signed (the test trusts it as a CA),
    in a folder nginx's user can read (what TLS_CERT_DIR is on a real host)."""
    directory = _make_temp_dir("leadsync-certs-", owner=nginx_user())
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-subj", f"/CN={SITE_DOMAIN}",
            "-addext", f"subjectAltName=DNS:{SITE_DOMAIN},IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-keyout", str(directory / "privkey.pem"), "-out", str(directory / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    user = nginx_user()
    if user is not None:
        for name in ("fullchain.pem", "privkey.pem"):
            os.chown(directory / name, user.pw_uid, user.pw_gid)
    return directory


class Nginx(_ProcessServer):
    """Debian's nginx on loopback, as an unprivileged user, with a temp prefix, pid and logs.

    `conf` is the rendered template (an http-context file, as the official image's conf.d/ holds); this class
    wraps it in the same main configuration the official image ships (events, mime types, include).
    """

    name = "nginx"
    stop_signal = signal.SIGQUIT  # graceful: finish the requests in flight

    def __init__(self, conf: str, http_port: int, https_port: int) -> None:
        self.conf = conf
        self.http_port = http_port
        self.https_port = https_port
        self._os_user = nginx_user()
        self.binary = find_binary("nginx") or "/usr/sbin/nginx"
        super().__init__(https_port)

    def _run_as(self) -> pwd.struct_passwd | None:
        return self._os_user

    def _prepare(self) -> None:
        self.dir = _make_temp_dir("leadsync-nginx-", owner=self._os_user)
        self._register()
        (self.dir / "tmp").mkdir()
        (self.dir / "conf.d").mkdir()
        (self.dir / "conf.d" / "leadsync.conf").write_text(self.conf)
        # What the official image's /etc/nginx/nginx.conf says, with every path in our prefix.
        temp_paths = "".join(
            f"    {kind}_temp_path {self.dir}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.dir / "nginx.conf").write_text(
            f"worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log notice;\n"
            "events { worker_connections 1024; }\n"
            "http {\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
            f"{temp_paths}    include {self.dir}/conf.d/*.conf;\n}}\n"
        )
        self.log_path.touch()
        if self._os_user is not None:
            for path in [*self.dir.rglob("*"), self.log_path]:
                os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _command(self) -> list[str]:
        assert self.dir is not None
        return [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(self.dir / "error.log"),
                "-g", "daemon off;"]  # fmt: skip

    def _ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/nginx-health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def error_log(self) -> str:
        assert self.dir is not None
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Rehearsal:
    """The compose topology as processes: web, worker, beat (and the migrate job) behind nginx."""

    def __init__(
        self,
        workdir: Path,
        postgres: PostgresServer,
        redis: RedisServer,
        smtp: SmtpSink,
        hubspot: HubSpotEmulator,
    ) -> None:
        self.workdir = workdir
        self.postgres, self.redis, self.smtp, self.hubspot = postgres, redis, smtp, hubspot
        self.cert_dir = make_certificate()
        self.env_file = sample_env(self.cert_dir)
        self.project = make_project(workdir / "project", self.env_file)
        (self.project / "packet" / "rehearsal-packet.pdf").write_bytes(PACKET_PDF)
        self.config = render(self.project)
        self.app_dir = workdir / "app"  # the image's WORKDIR /app
        (self.app_dir / "var").mkdir(parents=True)
        self.web_port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        self.https_port = free_port()
        self.processes: list[Process] = []
        self.nginx: Nginx | None = None
        # Clients trust the throwaway certificate and nothing else.
        self.tls = ssl.create_default_context(cafile=str(self.cert_dir / "fullchain.pem"))
        # Compose's bundled database: role and database "leadsync" (the compose default DATABASE_URL).
        postgres.create_database("leadsync")
        import psycopg

        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute("DO $$BEGIN CREATE ROLE leadsync LOGIN PASSWORD 'leadsync'; EXCEPTION WHEN duplicate_object "
                         "THEN NULL; END$$")  # fmt: skip
            conn.execute("ALTER DATABASE leadsync OWNER TO leadsync")
        with psycopg.connect(postgres.dsn("leadsync"), autocommit=True) as conn:
            conn.execute("ALTER SCHEMA public OWNER TO leadsync")

    # ------------------------------------------------------------------ the rewrite
    def _mounts(self, service: str) -> dict[str, str]:
        """Container path -> host path of a service's bind mounts, as compose resolved them."""
        mounts = {}
        for volume in self.config["services"][service].get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("/"):
                mounts[target] = source
        return mounts

    def rewrite(self, value: str, service: str) -> str:
        """Only the host names, container paths and fixed ports differ from what compose would run."""
        replacements = {
            "@postgres:5432/": f"@127.0.0.1:{self.postgres.port}/",
            "redis://redis:6379/": f"redis://127.0.0.1:{self.redis.port}/",
            "https://api.hubapi.com": self.hubspot.url,
            PROXY_COMPOSE_ADDRESS: "127.0.0.1",
            "/app/var": str(self.app_dir / "var"),
            **self._mounts(service),
        }
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value

    def service_env(self, service: str) -> dict[str, str]:
        environment = {
            name: self.rewrite(str(value), service) for name, value in self.service(service)["environment"].items()
        }
        if environment.get("SMTP_HOST") == SMTP_RELAY:
            environment.update(SMTP_HOST=self.smtp.host, SMTP_PORT=str(self.smtp.port))
        if "METRICS_PORT" in environment:
            environment["METRICS_PORT"] = str(self.metrics_port)
        # A container's environment is what compose gives it plus the image's PATH; the image's `leadsync`
        # is this interpreter's.
        bin_dir = str(Path(sys.executable).parent)
        return {**environment, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(self.app_dir), "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1"}  # fmt: skip

    def service_command(self, service: str) -> list[str]:
        command = [self.rewrite(str(part), service) for part in self.service(service)["command"]]
        if service == "web":
            command[command.index("--host") + 1] = "127.0.0.1"
            command[command.index("--port") + 1] = str(self.web_port)
        resolved = shutil.which(command[0], path=self.service_env(service)["PATH"])
        assert resolved, command
        return [resolved, *command[1:]]

    def service(self, name: str) -> dict[str, Any]:
        return self.config["services"][name]

    # ------------------------------------------------------------------ running
    def run_job(
        self, service: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A one-shot service (check, migrate) as compose runs it: its command, its environment, to completion."""
        return subprocess.run(
            self.service_command(service),
            env=env or self.service_env(service),
            cwd=self.app_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, service: str, env: dict[str, str] | None = None) -> Process:
        log = self.workdir / f"{service}-{len(self.processes)}.log"
        popen = subprocess.Popen(
            self.service_command(service),
            env=env or self.service_env(service),
            cwd=self.app_dir,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = Process(service, popen, log)
        self.processes.append(process)
        return process

    def proxy_conf(self) -> str:
        """The proxy's template rendered by envsubst with the proxy's (rewritten) environment, as the image does."""
        proxy = self.service("proxy")
        mounts = self._mounts("proxy")
        template = Path(mounts["/etc/nginx/templates/leadsync.conf.template"])
        environment = {name: str(value) for name, value in proxy["environment"].items()}
        environment.update(
            LEADSYNC_UPSTREAM=f"127.0.0.1:{self.web_port}",
            NGINX_HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
            NGINX_HTTPS_LISTEN=f"127.0.0.1:{self.https_port}",
            NGINX_CERT_DIR=mounts[environment["NGINX_CERT_DIR"]],
            NGINX_ACME_ROOT=mounts[environment["NGINX_ACME_ROOT"]],
        )
        # Like the image's 20-envsubst-on-templates.sh: only the variables that are set are substituted.
        shell_format = " ".join(f"${{{name}}}" for name in environment)
        return subprocess.run(
            ["envsubst", shell_format],
            input=template.read_text(),
            env={**environment, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def start(self) -> Rehearsal:
        migrate = self.run_job("migrate")
        assert migrate.returncode == 0, f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}"
        web = self.spawn("web")
        worker = self.spawn("worker")
        self.spawn("beat")
        wait_for(lambda: self._answers(f"http://127.0.0.1:{self.web_port}/readyz"), timeout=30, what="web /readyz")
        wait_for(lambda: b" ready." in worker.log.read_bytes(), timeout=30, what="worker ready")
        assert web.popen.poll() is None, self.logs()
        self.nginx = Nginx(self.proxy_conf(), self.http_port, self.https_port).start()
        return self

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, local_address: str = "127.0.0.1", **kwargs: Any) -> httpx.Client:
        """An HTTPS client of the proxy, from `local_address` (any 127.x address is this machine)."""
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.https_port}",
            headers={"Host": SITE_DOMAIN},
            transport=httpx.HTTPTransport(local_address=local_address, verify=self.tls),
            timeout=10,
            **kwargs,
        )

    def logs(self) -> str:
        parts = [f"--- {p.name} ({p.log.name})\n{p.log.read_text(errors='replace')[-6000:]}" for p in self.processes]
        if self.nginx is not None:
            parts.append(f"--- nginx error.log\n{self.nginx.error_log()}")
        return "\n".join(parts)

    def stop(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
        if self.nginx is not None:
            self.nginx.close()
        shutil.rmtree(self.cert_dir, ignore_errors=True)

    def __enter__(self) -> Rehearsal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LEADSYNC_SERVICES", "MAIL_FROM", "PACKET_PDF", "SITE_DOMAIN", "Nginx", "Rehearsal"]
