"""A real S3-compatible server on loopback for the tests: moto's server mode (`moto_server`), in its own process.

Credentials are dummies set in the environment, the way a user's provider chain would supply
real ones; instance-metadata lookups (a link-local address) are switched off, so nothing
leaves loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.server import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # No profile files of the machine's user.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


def _moto_command() -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    return [str(script)] if script.exists() else [shutil.which("moto_server") or "moto_server"]


@contextmanager
def s3_server(log_dir: Path, *, enforce_auth: bool = False) -> Iterator[S3Server]:
    """moto_server on a free loopback port; with `enforce_auth`, every request needs real IAM credentials
    (which the dummy ones are not), as a bucket behind denied credentials answers."""
    port = free_port()
    env = {**os.environ, **CREDENTIALS}
    if enforce_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    log = open(log_dir / f"moto-{port}.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [*_moto_command(), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.ConnectionError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    text = (log_dir / f"moto-{port}.log").read_text()
                    raise RuntimeError(f"moto_server did not start: {text}") from exc
                time.sleep(0.1)
        yield S3Server(endpoint=endpoint, process=process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@contextmanager
def credentials_in_env() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
